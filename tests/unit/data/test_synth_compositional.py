"""The compositional mode of the synthetic benchmark: bindings, captions, rendering, determinism, groups kept
within one split (generator and validation carve-out), the group table read back for evaluation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import av
import numpy as np
import pytest

from etva.cli import main as cli_main
from etva.config import SynthConfig
from etva.data.audio import log_mel
from etva.data.decode import decode_clip
from etva.data.synth import MANIFEST_NAME, SynthError, generate_dataset
from etva.data.synth import compositional as comp
from etva.data.synth.content import (
    _COLOUR_WORDS,
    _MOTION_WORDS,
    _SHAPE_WORDS,
    COLOURS,
    SHAPES,
    ClipSpec,
    ObjectSpec,
)
from etva.data.synth.groups import read_group_table, video_groups
from etva.data.synth.layouts import plan_msrvtt
from etva.data.synth.render import AUDIO_RATE, render_audio, render_frames, sound_span, write_clip
from etva.data.tokenizer import train_tokenizer

CFG = SynthConfig(width=96, height=64, fps=8, duration_s=2.0, captions_per_video=4, mode="compositional")
N = 12  # three groups: train, validate and test each hold one


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("comp")
    generate_dataset(out, N, 5, cfg=CFG, workers=2, progress=False)
    return out


def global_stats(spec: comp.CompositionalSpec) -> tuple:
    """What a clip-level pooled view sees: the multisets of colours, shapes and motions, sound, background."""
    objs = [o for ev in spec.events for o in ev.objects]
    return (
        tuple(sorted(o.colour for o in objs)),
        tuple(sorted(o.shape for o in objs)),
        tuple(sorted(o.motion for o in objs)),
        spec.sound,
        spec.background,
    )


def _spec(attrs: dict) -> comp.CompositionalSpec:
    bg = attrs["background"]
    events = tuple(ClipSpec(tuple(ObjectSpec(**o) for o in ev), "silence", bg) for ev in attrs["events"])
    return comp.CompositionalSpec(events, attrs["sound"], attrs["sound_at"], bg)


def test_each_distractor_changes_exactly_its_one_binding_and_keeps_every_global_statistic():
    rng = np.random.default_rng(0)
    for _ in range(300):
        changed, group = comp.sample_group(rng, comp.sample_spec(rng))
        base = group[0]
        assert changed[0] == "" and len(set(changed[1:])) == len(changed) - 1 == 3
        for binding, other in zip(changed[1:], group[1:]):
            assert other != base and global_stats(other) == global_stats(base)
            # exactly this binding: no other single binding change turns the target into it
            assert [b for b in comp.BINDINGS if comp.change_binding(base, b) == other] == [binding]
            if binding.endswith("_swap"):  # one event changed, two of its values exchanged
                k, what = int(binding[5]), binding.split(".")[1].removesuffix("_swap")
                assert other.events[1 - k] == base.events[1 - k]
                a, b = base.events[k].objects
                x, y = other.events[k].objects
                assert (getattr(x, what), getattr(y, what)) == (getattr(b, what), getattr(a, what))
                assert (x.shape, y.shape) == (a.shape, b.shape)


def _phrase_at(caption: str, obj: ObjectSpec) -> int:
    """Position of '<colour> <shape> <motion>' for the object (any synonyms), -1 when absent."""
    found = [
        caption.find(f"{c} {s} {m}")
        for c in _COLOUR_WORDS[obj.colour]
        for s in _SHAPE_WORDS[obj.shape]
        for m in _MOTION_WORDS[obj.motion]
    ]
    return max(found)


def test_captions_name_each_object_with_its_bindings_in_event_order(dataset):
    videos = json.loads((dataset / MANIFEST_NAME).read_text())["videos"]
    sentences = json.loads((dataset / "MSRVTT_data.json").read_text())["sentences"]
    assert len(sentences) == N * CFG.captions_per_video
    for s in sentences:
        spec, cap = _spec(videos[s["video_id"]]["attributes"]), s["caption"]
        first = [_phrase_at(cap, o) for o in spec.events[0].objects]
        second = [_phrase_at(cap, o) for o in spec.events[1].objects]
        assert min(first + second) >= 0, cap
        assert max(first) < min(second), cap  # the first event is told first
        assert any(w in cap for w in comp.MOMENT_WORDS[spec.sound_at]), cap
        assert not any(
            w in cap for w in comp.MOMENT_WORDS[comp.MOMENTS[1 - comp.MOMENTS.index(spec.sound_at)]]
        )


def test_manifest_groups_follow_the_declared_bindings(dataset):
    videos = json.loads((dataset / MANIFEST_NAME).read_text())["videos"]
    by_group: dict[int, list[dict]] = {}
    for v in videos.values():
        by_group.setdefault(v["group"], []).append(v)
    for members in by_group.values():
        target = _spec(members[0]["attributes"])
        assert members[0]["changed_binding"] == ""
        for m in members[1:]:
            assert _spec(m["attributes"]) == comp.change_binding(target, m["changed_binding"])


def test_rendered_clip_shows_the_bindings_per_event_and_the_sound_at_its_moment(dataset):
    videos = json.loads((dataset / MANIFEST_NAME).read_text())["videos"]
    half = int(CFG.fps * CFG.duration_s / 2)
    expected = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "static": (0, 0)}
    for v in list(videos.values())[:4]:
        spec = _spec(v["attributes"])
        with av.open(str(dataset / v["path"])) as c:
            frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).astype(float)
        with av.open(str(dataset / v["path"])) as c:
            audio = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
        for k, ev in enumerate(spec.events):
            seg = frames[k * half : (k + 1) * half]
            for obj in ev.objects:  # this colour, in this event, moves this way
                mask = np.abs(seg - np.array(COLOURS[obj.colour], float)).sum(-1) < 70
                (y0, x0), (y1, x1) = (np.argwhere(mask[t]).mean(0) for t in (0, -1))
                moved = (int(np.sign(round((x1 - x0) / 6))), int(np.sign(round((y1 - y0) / 6))))
                assert moved == expected[obj.motion], (v["path"], k, obj, moved)
        n = AUDIO_RATE  # one second per event
        loud = [float(np.abs(audio[i * n + 2000 : (i + 1) * n - 2000]).mean()) for i in range(2)]
        at = comp.MOMENTS.index(spec.sound_at)
        assert loud[at] > 0.02 and loud[1 - at] < 0.05 * loud[at], (
            v["path"],
            loud,
        )  # AAC delay: a small leak


def test_same_seed_same_plan_other_seed_other_plan():
    a, b, c = plan_msrvtt(16, 1, CFG), plan_msrvtt(16, 1, CFG), plan_msrvtt(16, 2, CFG)
    assert a.files == b.files and a.jobs == b.jobs and a.videos == b.videos
    assert a.files["MSRVTT_data.json"] != c.files["MSRVTT_data.json"]


def test_other_layouts_are_refused(tmp_path):
    with pytest.raises(SynthError, match="msrvtt layout only"):
        generate_dataset(tmp_path / "x", 4, 0, fmt="lsmdc", cfg=CFG, progress=False)


def _full_split_files(plan) -> dict[str, set[str]]:
    files = {name: set(plan.files[name].split()) for name in plan.files if name.endswith(".txt")}
    for name in ("MSRVTT_train.9k.csv", "MSRVTT_train.7k.csv"):
        files[name] = set(plan.files[name].split()[1:])
    files["MSRVTT_JSFUSION_test.csv"] = {
        row.split(",")[2] for row in plan.files["MSRVTT_JSFUSION_test.csv"].split("\n")[1:] if row
    }
    return files


@pytest.mark.parametrize("n, seed", [(9, 0), (24, 3), (97, 1), (300, 0)])
def test_no_group_straddles_a_split(n, seed):
    plan = plan_msrvtt(n, seed, CFG)
    groups: dict[int, set[str]] = {}
    for vid, v in plan.videos.items():
        groups.setdefault(v["group"], set()).add(vid)
    assert len(groups) == -(-n // comp.GROUP_SIZE)
    for name, ids in _full_split_files(plan).items():  # every split file: a union of whole groups
        for members in groups.values():
            assert members <= ids or not members & ids, (name, sorted(members))
    for members in groups.values():  # the manifest agrees
        assert len({plan.videos[v]["split"] for v in members}) == 1
    assert plan.splits["full/train"] and plan.splits["full/validate"] and plan.splits["full/test"]


def test_too_few_videos_or_a_fraction_of_a_frame_are_refused(tmp_path):
    with pytest.raises(SynthError, match="at least 9 videos"):
        generate_dataset(tmp_path / "x", 8, 0, cfg=CFG, progress=False)
    uneven = SynthConfig(width=96, height=64, fps=5, duration_s=3.1, mode="compositional")
    with pytest.raises(SynthError, match="whole number of frames"):
        generate_dataset(tmp_path / "y", 12, 0, cfg=uneven, progress=False)
    short = SynthConfig(width=96, height=64, fps=5, duration_s=1.6, mode="compositional")
    with pytest.raises(SynthError, match=r"duration_s >= 1.68, so that each event's sound lasts one 0.32 s"):
        generate_dataset(tmp_path / "z", 12, 0, cfg=short, progress=False)


def _rendered(plan, vid: str) -> tuple[np.ndarray, np.ndarray]:
    job = next(j for j in plan.jobs if j.path == plan.videos[vid]["path"])
    rng = np.random.default_rng(job.seed)
    return render_frames(job, rng), render_audio(job, rng)


def _halves_swapped(x: np.ndarray) -> np.ndarray:
    """The two halves exchanged around an odd middle item (the cut frame of an odd frame count)."""
    mid, rest = len(x) // 2, len(x) - len(x) // 2
    return np.concatenate([x[rest:], x[mid:rest], x[:mid]])


def _sound_shift(duration: float) -> int:
    """Samples between the sound of the first event and the sound of the second (both on the grid)."""
    n = round(duration * AUDIO_RATE)
    return sound_span(duration / 2, duration, n, True)[0] - sound_span(0.0, duration / 2, n, True)[0]


@pytest.mark.parametrize("fps, duration", [(8, 2.0), (5, 3.0)])  # 16 frames; 15 frames (a middle cut)
def test_target_and_distractors_have_equal_pooled_statistics(fps, duration):
    """The order distractor is the target's own frames with the two halves exchanged, the sound-moment one
    its own audio shifted (circularly) from one event's grid span to the other's, so every statistic pooled
    over time (any per-frame or per-sample feature, summed, averaged or max-pooled) is equal; a colour or
    motion swap redraws only its own event, at the same positions."""
    cfg = dataclasses.replace(CFG, fps=fps, duration_s=duration, width=48, height=32)
    plan = plan_msrvtt(40, 2, cfg)
    by_group: dict[int, list[str]] = {}
    for vid, v in plan.videos.items():
        by_group.setdefault(v["group"], []).append(vid)
    seen = set()
    for members in by_group.values():
        frames, audio = _rendered(plan, members[0])
        n = len(frames)
        assert n == round(fps * duration) and (n % 2 == 0 or (frames[n // 2] == frames[n // 2, 0, 0]).all())
        swap_f, shift = _halves_swapped(frames), _sound_shift(duration)
        swap_a = np.roll(audio, shift if np.abs(audio[: len(audio) // 2]).sum() > 0 else -shift)
        for vid in members[1:]:
            changed = plan.videos[vid]["changed_binding"]
            f, a = _rendered(plan, vid)
            seen.add(changed.split(".")[-1])
            if changed == "order":
                assert np.array_equal(f, swap_f) and np.array_equal(a, audio)
            elif changed == "sound_moment":
                assert np.array_equal(f, frames) and np.array_equal(a, swap_a)
            else:  # event k redrawn with two values exchanged; the other event and the sound unchanged
                k = int(changed[5])
                keep = slice(0, n // 2) if k == 1 else slice(n - n // 2, None)
                assert np.array_equal(f[keep], frames[keep]) and np.array_equal(a, audio)
                assert not np.array_equal(f, frames)
            pooled = [
                (x.mean(axis=(0, 1, 2)), x.max(axis=0), np.sort(x.sum(axis=(1, 2, 3)))) for x in (f, frames)
            ]
            if changed in ("order", "sound_moment"):  # the pooled views a blind model has are equal
                assert all(np.array_equal(p, q) for p, q in zip(*pooled))
                assert np.array_equal(np.sort(a), np.sort(audio))  # the same samples, moved
    assert seen == {"colour_swap", "motion_swap", "order", "sound_moment"}


def _decoded_mel(path: Path) -> np.ndarray:
    clip = decode_clip(path, 2, 32, audio_rate=AUDIO_RATE, max_audio_s=CFG.duration_s)
    return log_mel(clip.audio, AUDIO_RATE, 40, CFG.duration_s)[0]  # (A, M)


def _shift_error(a: np.ndarray, b: np.ndarray, shift: int) -> np.ndarray:
    """Per-frame error of ``b`` against ``a`` shifted circularly by ``shift`` frames."""
    return np.abs(np.roll(a, shift, axis=0) - b).max(axis=1)


def test_decoded_sound_moment_is_an_exact_shift_of_the_targets_sound(dataset, tmp_path):
    """What the audio expert reads: the log-mel frames of a sound-moment distractor, decoded from its file,
    are exactly its target's shifted circularly (so a model blind to where things happen in a clip cannot
    tell them apart). The same clips with the sound over the whole event are not: the AAC encoder's start-up
    in the file's first frames marks where the sound is (the cue a blind control learnt to 97.6 %)."""
    plan = plan_msrvtt(N, 5, CFG)
    jobs = {j.path: j for j in plan.jobs}
    by_group: dict[int, dict[str, dict]] = {}
    for v in plan.videos.values():
        by_group.setdefault(v["group"], {})[v["changed_binding"] or "target"] = v
    pairs = [(g["target"], g["sound_moment"]) for g in by_group.values() if "sound_moment" in g]
    assert pairs
    shift = _sound_shift(CFG.duration_s) // 160  # in 10 ms mel hops
    for target_v, moved_v in pairs:
        paths = [target_v["path"], moved_v["path"]]
        target, moved = (_decoded_mel(dataset / p) for p in paths)
        k = shift if target_v["attributes"]["sound_at"] == "start" else -shift
        assert _shift_error(target, moved, k).max() == 0.0, paths
        for p in paths:  # the same clips, each sound over its whole event
            write_clip(str(tmp_path), dataclasses.replace(jobs[p], aligned_sound=False))
        target, moved = (_decoded_mel(tmp_path / p) for p in paths)
        err = _shift_error(target, moved, len(target) // 2)  # the halves exchanged
        assert err[:7].max() > 1.0 > 10 * np.median(err), (paths, err[:10])  # the start marks it


def test_group_table_and_carve_out_keep_groups_whole(dataset):
    from etva.data.records import ClipRecord
    from ray_jobs.prepare import carve_validation  # lazy: imports ray

    videos = json.loads((dataset / MANIFEST_NAME).read_text())["videos"]
    ids = sorted(videos, key=lambda v: int(v.removeprefix("video")))
    table = read_group_table(dataset, ids[::-1])
    assert table.group.tolist() == [videos[v]["group"] for v in ids[::-1]]
    assert table.kind.tolist() == [
        videos[v]["changed_binding"].split(".")[-1].removesuffix("_swap") for v in ids[::-1]
    ]
    groups = video_groups(dataset)
    assert groups == {v: videos[v]["group"] for v in ids}
    records = [ClipRecord(v, f"videos/all/{v}.mp4", ["c"], "train") for v in ids[:8]]  # two whole groups
    train, val = carve_validation(records, 1, groups)
    assert len(val) == 4 and len({groups[r.video_id] for r in val}) == 1
    assert not {groups[r.video_id] for r in val} & {groups[r.video_id] for r in train}
    with pytest.raises(ValueError, match="not in the manifest"):
        read_group_table(dataset, ["video999"])


def test_group_table_is_none_for_shapes_and_an_old_layout_is_refused(tmp_path):
    assert read_group_table(tmp_path, ["video0"]) is None and video_groups(tmp_path) is None  # no manifest
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"params": {"format": "msrvtt"}, "videos": {}}))
    assert read_group_table(tmp_path, ["video0"]) is None  # the shapes mode: no binding metric
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"params": {"mode": "compositional"}, "videos": {}}))
    with pytest.raises(ValueError, match="generate it again"):
        read_group_table(tmp_path, ["video0"])


@pytest.fixture(scope="module")
def fused(tmp_path_factory) -> Path:
    """The benchmark of ``dataset`` with fused object words, made the way a user makes it (``etva data synth``)."""
    out = tmp_path_factory.mktemp("fused")
    argv = ["data", "synth", "--out", str(out), "--num-videos", str(N), "--seed", "5", "--width", "96",
            "--height", "64", "--fps", "8", "--duration", "2", "--captions-per-video", "4",
            "--mode", "compositional", "--object-words", "fused", "--workers", "2", "--no-progress"]  # fmt: skip
    assert cli_main(argv) == 0
    return out


def test_fused_captions_name_each_object_by_one_word_of_its_colour_and_shape(fused):
    videos = json.loads((fused / MANIFEST_NAME).read_text())["videos"]
    sentences = json.loads((fused / "MSRVTT_data.json").read_text())["sentences"]
    assert len(sentences) == N * CFG.captions_per_video
    for s in sentences:
        spec, words = _spec(videos[s["video_id"]]["attributes"]), s["caption"].replace(",", "").split()
        at = []
        for ev in spec.events:
            for o in ev.objects:
                k = words.index(comp.fused_word(o))
                assert any(" ".join(words[k + 1 :]).startswith(m) for m in _MOTION_WORDS[o.motion]), s
                at.append(k)
        assert max(at[:2]) < min(at[2:]), s  # the first event is told first
        named = {w for ws in [*_COLOUR_WORDS.values(), *_SHAPE_WORDS.values()] for w in ws}
        assert not named & set(words), s  # no colour or shape apart from the fused words


def test_fused_words_change_the_captions_only(dataset, fused):
    a, b = (json.loads((d / MANIFEST_NAME).read_text()) for d in (dataset, fused))
    assert b["params"] == {**a["params"], "object_words": "fused"}
    assert a["videos"] == b["videos"]
    for v in a["videos"].values():
        assert (dataset / v["path"]).read_bytes() == (fused / v["path"]).read_bytes()
    with pytest.raises(SynthError, match="object_words"):  # a folder of one kind is not completed as the other
        generate_dataset(fused, N, 5, cfg=CFG, progress=False)
    with pytest.raises(SynthError, match="compositional captions only"):
        generate_dataset(tmp := fused.parent / "shapes-fused", 8, 0, cfg=SynthConfig(object_words="fused"))
    assert not tmp.exists()


def test_the_caption_tokenizer_keeps_each_fused_word_one_piece(fused, tmp_path):
    captions = [s["caption"] for s in json.loads((fused / "MSRVTT_data.json").read_text())["sentences"]]
    tok = train_tokenizer(captions, tmp_path, vocab_size=300)
    for c in captions:
        pieces = tok.tokenize(c)
        for w in c.replace(",", "").split():
            if w in {comp.fused_word(ObjectSpec(col, shp, "left")) for col in COLOURS for shp in SHAPES}:
                assert "▁" + w in pieces, (w, pieces)
