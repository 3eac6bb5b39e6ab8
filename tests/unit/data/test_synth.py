"""Synthetic shapes benchmark: layouts, file formats, determinism, content, errors and the CLI."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from etva.cli import main as cli_main
from etva.config import SynthConfig
from etva.data.synth import MANIFEST_NAME, PARTIAL_NAME, SynthError, content, generate_dataset
from etva.data.synth.layouts import plan_msrvtt, split_sizes
from etva.data.synth.render import AUDIO_RATE, ClipJob, write_clip

REPO = Path(__file__).resolve().parents[3]
CFG = SynthConfig(width=96, height=64, fps=8, duration_s=1.0, captions_per_video=3)
N = 12


def _gen(out: Path, n: int = N, seed: int = 3, fmt: str = "msrvtt", workers: int = 1, cfg=CFG) -> dict:
    return generate_dataset(out, n, seed, fmt=fmt, cfg=cfg, workers=workers, progress=False)


def _decode(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """All video frames (T, H, W, 3) and all audio samples (S,) of a clip."""
    with av.open(str(path)) as c:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    with av.open(str(path)) as c:
        audio = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
    return frames, audio


def _annotation_files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def msrvtt(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("msrvtt")
    summary = _gen(out, workers=2)
    assert summary["clips_written"] == N and not summary["reused"]
    return out


def test_same_seed_gives_identical_annotations_and_frames(msrvtt, tmp_path):
    other = tmp_path / "again"
    _gen(other, workers=1)  # serial vs the fixture's 2-process pool
    assert _annotation_files(msrvtt) == _annotation_files(other)
    for i in range(N):
        fa, aa = _decode(msrvtt / f"videos/all/video{i}.mp4")
        fb, ab = _decode(other / f"videos/all/video{i}.mp4")
        np.testing.assert_array_equal(fa, fb)
        np.testing.assert_array_equal(aa, ab)
    different = tmp_path / "seed4"
    _gen(different, seed=4)
    assert (different / "MSRVTT_data.json").read_bytes() != (msrvtt / "MSRVTT_data.json").read_bytes()


def test_msrvtt_json_and_videos(msrvtt):
    data = json.loads((msrvtt / "MSRVTT_data.json").read_text())
    assert [v["video_id"] for v in data["videos"]] == [f"video{i}" for i in range(N)]
    for v in data["videos"]:
        assert set(v) == {"video_id", "category", "url", "start time", "end time", "split", "id"}
        assert v["split"] in {"train", "validate", "test"}
        assert v["end time"] - v["start time"] == pytest.approx(CFG.duration_s)
    ids = {v["video_id"] for v in data["videos"]}
    assert len(data["sentences"]) == N * CFG.captions_per_video
    assert len({s["sen_id"] for s in data["sentences"]}) == len(data["sentences"])
    for s in data["sentences"]:
        assert set(s) == {"caption", "video_id", "sen_id"} and s["video_id"] in ids and s["caption"]
    for vid in ids:
        with av.open(str(msrvtt / "videos" / "all" / f"{vid}.mp4")) as c:
            assert [s.type for s in c.streams] == ["video", "audio"]
            v, a = c.streams.video[0], c.streams.audio[0]
            assert v.codec_context.name == "h264" and v.codec_context.pix_fmt == "yuv420p"
            assert (v.codec_context.width, v.codec_context.height) == (CFG.width, CFG.height)
            assert a.codec_context.name == "aac" and a.codec_context.sample_rate == AUDIO_RATE
            assert a.codec_context.channels == 1
            assert sum(1 for _ in c.decode(video=0)) == round(CFG.duration_s * CFG.fps)


def test_msrvtt_split_files(msrvtt):
    lines: dict[str, list[str]] = {}
    for name in (
        "train_list_full.txt",
        "val_list_full.txt",
        "test_list_full.txt",
        "train_list_miech.txt",
        "test_list_miech.txt",
    ):
        lines[name] = (msrvtt / name).read_text().splitlines()
    full = lines["train_list_full.txt"] + lines["val_list_full.txt"] + lines["test_list_full.txt"]
    assert full == [f"video{i}" for i in range(N)]
    data = json.loads((msrvtt / "MSRVTT_data.json").read_text())
    split_of = {v["video_id"]: v["split"] for v in data["videos"]}
    for name, split in (
        ("train_list_full.txt", "train"),
        ("val_list_full.txt", "validate"),
        ("test_list_full.txt", "test"),
    ):
        assert {split_of[v] for v in lines[name]} == {split}
    assert set(lines["test_list_miech.txt"]) <= set(lines["test_list_full.txt"])
    assert sorted(lines["train_list_miech.txt"] + lines["test_list_miech.txt"]) == sorted(full)
    with open(msrvtt / "MSRVTT_train.7k.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["video_id"] for r in rows] == lines["train_list_full.txt"] + lines["val_list_full.txt"]


def test_third_party_reads_msrvtt_with_plain_csv_and_json(msrvtt):
    """Read the files the way CLIP4Clip-style code does (csv columns + JSON), not with our loader."""
    data = json.load(open(msrvtt / "MSRVTT_data.json"))
    captions: dict[str, list[str]] = {}
    for s in data["sentences"]:
        captions.setdefault(s["video_id"], []).append(s["caption"])
    with open(msrvtt / "MSRVTT_JSFUSION_test.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["key", "vid_key", "video_id", "sentence"]
        test = list(reader)
    with open(msrvtt / "MSRVTT_train.9k.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["video_id"]
        train = [r["video_id"] for r in reader]
    assert [r["key"] for r in test] == [f"ret{i}" for i in range(len(test))]
    test_full = set((msrvtt / "test_list_full.txt").read_text().split())
    for r in test:
        assert r["vid_key"] == "msr" + r["video_id"][len("video") :]
        assert r["sentence"] in captions[r["video_id"]]
        assert r["video_id"] in test_full
        assert (msrvtt / "videos" / "all" / f"{r['video_id']}.mp4").is_file()
    test_ids = [r["video_id"] for r in test]
    assert len(set(test_ids)) == len(test_ids) and not set(test_ids) & set(train)
    assert sorted(train + test_ids) == sorted(v["video_id"] for v in data["videos"])


def test_split_proportions_follow_the_real_dataset():
    assert split_sizes(10000, [0.6513, 0.0497, 0.2990]) == [6513, 497, 2990]
    plan = plan_msrvtt(100, 0, CFG)
    assert plan.splits == {
        "full/train": 65,
        "full/validate": 5,
        "full/test": 30,
        "1k-A/train": 90,
        "1k-A/test": 10,
        "1k-B/train": 90,
        "1k-B/test": 10,
        "7k/train": 70,
    }
    assert len(plan.files["MSRVTT_train.9k.csv"].splitlines()) == 1 + 90
    assert split_sizes(3, [0.6513, 0.0497, 0.2990]) == [1, 1, 1]


def _words(spec: content.ClipSpec) -> list[list[str]]:
    groups = [
        content._SOUND_CLAUSES[spec.sound] + content._SOUND_SHORT[spec.sound],
        content._BACKGROUND_WORDS[spec.background],
    ]
    for o in spec.objects:
        groups += [
            content._COLOUR_WORDS[o.colour],
            content._SHAPE_WORDS[o.shape],
            content._MOTION_WORDS[o.motion],
        ]
    return groups


def _spec(attrs: dict) -> content.ClipSpec:
    objs = tuple(content.ObjectSpec(**o) for o in attrs["objects"])
    return content.ClipSpec(objs, attrs["sound"], attrs["background"])


def _diff(a: dict, b: dict) -> int:
    n = sum(a[k] != b[k] for k in ("sound", "background"))
    return n + sum(x[k] != y[k] for x, y in zip(a["objects"], b["objects"]) for k in x)


def test_manifest_hard_negatives_and_captions_name_every_attribute(msrvtt):
    manifest = json.loads((msrvtt / MANIFEST_NAME).read_text())
    videos = manifest["videos"]
    assert set(videos) == {f"video{i}" for i in range(N)}
    assert any(v["hard_negatives"] for v in videos.values())
    for vid, v in videos.items():
        for other in v["hard_negatives"]:
            assert _diff(v["attributes"], videos[other]["attributes"]) == 1, (vid, other)
    data = json.loads((msrvtt / "MSRVTT_data.json").read_text())
    for s in data["sentences"]:
        for synonyms in _words(_spec(videos[s["video_id"]]["attributes"])):
            assert any(w in s["caption"] for w in synonyms), (s["caption"], synonyms)
    rng = np.random.default_rng(0)
    for _ in range(200):  # every sampled group: pairwise exactly one attribute apart
        _, group = content.sample_group(rng, content.sample_spec(rng), 4)
        for i, a in enumerate(group):
            for b in group[i + 1 :]:
                assert _diff(a.attributes(), b.attributes()) == 1


def _check_clip(path: Path, spec: content.ClipSpec) -> None:
    """Each object's colour is visible and moves the named way; the sound is the named one."""
    frames, audio = _decode(path)
    for obj in spec.objects:
        colour = np.array(content.COLOURS[obj.colour], float)
        mask = np.abs(frames.astype(float) - colour).sum(-1) < 70  # (T, H, W)
        assert mask[0].sum() > 20 and mask[-1].sum() > 20, (path.name, obj)
        (y0, x0), (y1, x1) = (np.argwhere(mask[t]).mean(0) for t in (0, -1))
        moved = (int(np.sign(round((x1 - x0) / 8))), int(np.sign(round((y1 - y0) / 8))))
        expected = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "static": (0, 0)}
        assert moved == expected[obj.motion], (path.name, obj, moved)
    a = audio[: int(CFG.duration_s * AUDIO_RATE)]
    if spec.sound == "silence":
        assert np.abs(a).max() < 1e-3, path.name
    elif spec.sound == "noise":
        assert a.std() > 0.05 and np.abs(np.fft.rfft(a)).max() < 20 * np.abs(np.fft.rfft(a)).mean()
    else:
        peak = np.argmax(np.abs(np.fft.rfft(a))) * AUDIO_RATE / len(a)
        assert abs(peak - {"low": 220, "high": 1760}[spec.sound]) < 20, (path.name, peak)


def test_clip_content_matches_the_manifest(msrvtt):
    videos = json.loads((msrvtt / MANIFEST_NAME).read_text())["videos"]
    for v in videos.values():
        _check_clip(msrvtt / v["path"], _spec(v["attributes"]))


def test_every_attribute_value_is_rendered(tmp_path):
    obj = content.ObjectSpec
    specs = [
        content.ClipSpec(
            (obj(list(content.COLOURS)[i], content.SHAPES[i % 4], content.MOTIONS[i % 5]),),
            content.SOUNDS[i % 4],
            list(content.BACKGROUNDS)[i % 2],
        )
        for i in range(6)
    ]
    specs += [
        content.ClipSpec((obj("red", "cross", "left"), obj("blue", "circle", "right")), "high", "gray"),
        content.ClipSpec((obj("green", "square", "up"), obj("yellow", "triangle", "down")), "low", "black"),
        content.ClipSpec(
            (obj("orange", "circle", "static"), obj("purple", "square", "down")), "noise", "gray"
        ),
    ]
    for i, spec in enumerate(specs):
        job = ClipJob(f"c{i}.mp4", ((spec, 0.0, 1.0),), 1.0, CFG.width, CFG.height, CFG.fps, seed=i)
        write_clip(str(tmp_path), job)
        _check_clip(tmp_path / job.path, spec)


_TIME = re.compile(r"^\d\d\.\d\d\.\d\d\.\d\d\d$")


def test_lsmdc_layout(tmp_path):
    summary = _gen(tmp_path, n=N, fmt="lsmdc")
    names = ["LSMDC16_annos_training.csv", "LSMDC16_annos_val.csv", "LSMDC16_challenge_1000_publictect.csv"]
    rows = []
    for name in names:
        with open(tmp_path / name, newline="") as f:
            part = list(csv.reader(f, delimiter="\t"))
        assert part, name
        rows += part
    assert len(rows) == N == sum(summary["splits"].values())
    for row in rows:
        assert len(row) == 6
        clip_id, a, b, c, d, sentence = row
        assert all(_TIME.match(t) for t in (a, b, c, d)) and sentence
        movie = clip_id.rsplit("_", 1)[0]
        assert clip_id == f"{movie}_{a}-{b}" and re.match(r"^\d{4}_Shapes_Movie$", movie)
        assert (tmp_path / movie / f"{clip_id}.mp4").is_file()
    assert len({r[0] for r in rows}) == N


def test_activitynet_layout(tmp_path):
    _gen(tmp_path, n=6, fmt="activitynet")
    annos = {n: json.loads((tmp_path / n).read_text()) for n in ("train.json", "val_1.json", "val_2.json")}
    assert annos["train.json"] and annos["val_1.json"]
    assert set(annos["val_1.json"]) == set(annos["val_2.json"])
    assert not set(annos["train.json"]) & set(annos["val_1.json"])
    for anno in annos.values():
        for key, entry in anno.items():
            assert re.match(r"^v_\w+$", key) and set(entry) == {"duration", "timestamps", "sentences"}
            assert entry["duration"] == pytest.approx(3 * CFG.duration_s)
            assert len(entry["timestamps"]) == len(entry["sentences"]) >= 2
            for s, e in entry["timestamps"]:
                assert 0 <= s < e <= entry["duration"]
            path = tmp_path / "videos" / f"{key}.mp4"
            with av.open(str(path)) as c:
                assert c.duration / 1e6 == pytest.approx(entry["duration"], abs=0.3)


def test_rerun_is_idempotent_and_completes_a_partial_output(msrvtt, tmp_path):
    again = _gen(msrvtt, workers=2)
    assert again["reused"] and again["files_written"] == 0
    out = tmp_path / "partial"
    _gen(out, n=4)
    clip = out / "videos" / "all" / "video2.mp4"
    before = clip.read_bytes()
    clip.unlink()  # as if interrupted: a clip missing, a half-written one, the in-progress marker
    stale = clip.with_name("video3.mp4.partial")
    stale.write_bytes(b"half")
    (out / MANIFEST_NAME).rename(out / PARTIAL_NAME)
    summary = _gen(out, n=4)
    assert summary["clips_written"] == 1 and clip.read_bytes() == before
    assert not stale.exists() and not (out / PARTIAL_NAME).exists() and (out / MANIFEST_NAME).is_file()
    assert _gen(out, n=4)["reused"]


def test_bad_arguments_and_paths(msrvtt, tmp_path):
    cases = [
        (dict(n=0), "num_videos must be"),
        (dict(seed=-1), "seed must be"),
        (dict(fmt="webvid"), "unknown format"),
        (dict(cfg=SynthConfig(width=15)), "width must be"),
        (dict(cfg=SynthConfig(duration_s=0)), "duration_s must be"),
    ]
    for kwargs, message in cases:
        with pytest.raises(SynthError, match=message):
            _gen(tmp_path / "x", **kwargs)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(SynthError, match="is a file"):
        _gen(a_file)
    with pytest.raises(SynthError, match="cannot create"):
        _gen(a_file / "sub")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(SynthError, match="not empty") as err:
        _gen(foreign)
    assert err.value.hint
    with pytest.raises(SynthError, match=r"made with num_videos=12 \(asked: num_videos=5\)"):
        _gen(msrvtt, n=5)
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(SynthError, match="not writable"):
            _gen(locked)


def test_cli_help_and_user_errors(tmp_path, capsys):
    for argv in (["--help"], ["data", "--help"], ["data", "synth", "--help"]):
        with pytest.raises(SystemExit) as exit_:
            cli_main(argv)
        assert exit_.value.code == 0
    assert "--num-videos" in capsys.readouterr().out
    a_file = tmp_path / "f"
    a_file.write_text("")
    assert cli_main(["data", "synth", "--out", str(a_file), "--num-videos", "2"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("etva: error: output path") and err[1].startswith("hint: ")
    with pytest.raises(SystemExit) as exit_:
        cli_main(["data", "synth", "--out", str(tmp_path / "y"), "--num-videos", "0"])
    assert exit_.value.code == 2 and "--num-videos: must be >= 1" in capsys.readouterr().err


def test_python_m_etva_data_synth_runs(tmp_path):
    out = tmp_path / "cli"
    cmd = [
        sys.executable,
        "-m",
        "etva",
        "data",
        "synth",
        "--out",
        str(out),
        "--num-videos",
        "3",
        "--seed",
        "1",
        "--width",
        "64",
        "--height",
        "48",
        "--fps",
        "4",
        "--duration",
        "1",
        "--no-progress",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["num_videos"] == 3 and summary["splits"]["full/test"] == 1
    assert len(list((out / "videos" / "all").glob("*.mp4"))) == 3
