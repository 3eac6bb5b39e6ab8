"""ActivityNet Captions, LSMDC and pre-extracted feature stores in their real formats; bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from etva.data import AnnotationError, load_feature_manifest, load_records
from etva.data.sampling import sample_indices
from etva.data.sources.lsmdc import movie_of

# ------------------------------------------------------------------------------------------ ActivityNet


def write_activitynet(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    train = {
        "v_aaa": {
            "duration": 20.5,
            "timestamps": [[0, 5], [5, 12.5]],
            "sentences": ["A man opens a door. ", " He walks in."],
        },
        "v_bbb": {"duration": 8.0, "timestamps": [[0, 8]], "sentences": ["Kids play ball."]},
        "v_ccc": {"duration": 3.0, "timestamps": [[0, 1], [1, 3]], "sentences": ["  ", ""]},
    }
    val = {"v_ddd": {"duration": 9.0, "timestamps": [[0, 9]], "sentences": ["A dog runs."]}}
    (root / "train.json").write_text(json.dumps(train))
    (root / "val_1.json").write_text(json.dumps(val))
    (root / "val_2.json").write_text(json.dumps({"v_eee": val["v_ddd"]}))
    (root / "videos").mkdir()
    (root / "videos" / "v_aaa.webm").write_bytes(b"x")
    (root / "videos" / "v_aaa.mp4").write_bytes(b"x")  # .mp4 preferred over .webm
    (root / "v_bbb.mkv").write_bytes(b"x")  # found in root/ as well
    (root / "ddd.mp4").write_bytes(b"x")  # downloads without the v_ prefix
    return root


def test_activitynet_paragraphs_and_file_lookup(tmp_path):
    root = write_activitynet(tmp_path / "anet")
    records, summary = load_records("activitynet", root, "train", return_summary=True)
    by_id = {r.video_id: r for r in records}
    assert set(by_id) == {"v_aaa", "v_bbb"} and summary.videos_without_captions == 1
    assert by_id["v_aaa"].captions == ["A man opens a door. He walks in."]
    assert by_id["v_aaa"].video_path == str(root / "videos" / "v_aaa.mp4")
    assert by_id["v_bbb"].video_path == str(root / "v_bbb.mkv")
    assert summary.missing_video_files == 0


def test_activitynet_split_aliases(tmp_path):
    root = write_activitynet(tmp_path / "anet")
    for split in ("val_1", "val", "test"):
        (rec,) = load_records("activitynet", root, split)
        assert rec.video_id == "v_ddd" and rec.split == "val_1"
        assert rec.video_path == str(root / "ddd.mp4")
    (rec,) = load_records("activitynet", root, "val_2")
    assert rec.video_id == "v_eee" and rec.video_path == str(root / "videos" / "v_eee.mp4")
    with pytest.raises(ValueError, match="no split 'dev'"):
        load_records("activitynet", root, "dev")


@pytest.mark.parametrize(
    "entry, where",
    [
        ({"duration": 3.0, "timestamps": [[0, 1]], "sentences": ["a", "b"]}, "'v_x'.timestamps"),
        ({"timestamps": [[0, 1]], "sentences": ["a"]}, "'v_x': key 'duration'"),
        ({"duration": 3.0, "timestamps": [[0, 1]], "sentences": "a"}, "'v_x'.sentences"),
        ({"duration": "long", "timestamps": [[0, 1]], "sentences": ["a"]}, "'v_x'.duration"),
    ],
)
def test_activitynet_malformed_entries(tmp_path, entry, where):
    root = write_activitynet(tmp_path / "anet")
    (root / "val_1.json").write_text(json.dumps({"v_x": entry}))
    with pytest.raises(AnnotationError) as info:
        load_records("activitynet", root, "val_1")
    assert "val_1.json" in str(info.value) and where in str(info.value)


def test_activitynet_bad_json_and_unsafe_id(tmp_path):
    root = write_activitynet(tmp_path / "anet")
    (root / "val_2.json").write_text("{\n\n  'v_a': 1}")
    with pytest.raises(AnnotationError, match=r"val_2.json: line 3 column 3: valid JSON"):
        load_records("activitynet", root, "val_2")
    entry = {"duration": 1.0, "timestamps": [[0, 1]], "sentences": ["a"]}
    (root / "val_2.json").write_text(json.dumps({"../../v_x": entry}))
    with pytest.raises(AnnotationError, match="inside the dataset root"):
        load_records("activitynet", root, "val_2")


# ------------------------------------------------------------------------------------------------ LSMDC

CLIP_A = "1004_Juno_00.00.32.849-00.00.35.458"
CLIP_B = "1004_Juno_00.00.40.000-00.00.42.100"
CLIP_C = "0001_American_Beauty_00.01.00.000-00.01.02.500"


def lsmdc_line(clip: str, sentence: str) -> str:
    return f"{clip}\t00.00.32.849\t00.00.35.458\t00.00.32.000\t00.00.36.000\t{sentence}\n"


def write_lsmdc(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "LSMDC16_annos_training.csv").write_text(
        lsmdc_line(CLIP_A, 'SOMEONE looks at "the" door.') + lsmdc_line(CLIP_C, "SOMEONE smiles.")
    )
    (root / "LSMDC16_annos_val.csv").write_text(lsmdc_line(CLIP_B, "She sits."))
    (root / "LSMDC16_challenge_1000_publictect.csv").write_text(
        lsmdc_line(CLIP_B, "She sits.") + "\n" + lsmdc_line(CLIP_A, "   ")
    )
    (root / "videos" / "1004_Juno").mkdir(parents=True)
    (root / "videos" / "1004_Juno" / f"{CLIP_A}.avi").write_bytes(b"x")
    (root / "0001_American_Beauty").mkdir()
    (root / "0001_American_Beauty" / f"{CLIP_C}.mp4").write_bytes(b"x")
    return root


def test_lsmdc_movie_folder_and_clip_lookup(tmp_path):
    root = write_lsmdc(tmp_path / "lsmdc")
    assert movie_of(CLIP_A) == "1004_Juno" and movie_of(CLIP_C) == "0001_American_Beauty"
    records = load_records("lsmdc", root, "train")
    assert [(r.video_id, r.captions) for r in records] == [
        (CLIP_A, ['SOMEONE looks at "the" door.']),
        (CLIP_C, ["SOMEONE smiles."]),
    ]
    assert records[0].video_path == str(root / "videos" / "1004_Juno" / f"{CLIP_A}.avi")
    assert records[1].video_path == str(root / "0001_American_Beauty" / f"{CLIP_C}.mp4")


def test_lsmdc_test_split_drops_empty_and_counts_missing(tmp_path):
    root = write_lsmdc(tmp_path / "lsmdc")
    records, summary = load_records("lsmdc", root, "test", return_summary=True)
    assert [r.video_id for r in records] == [CLIP_B] and records[0].split == "test"
    assert summary.empty_captions_dropped == 1 and summary.videos_without_captions == 1
    assert summary.missing_video_files == 1  # CLIP_B has no file; its default path is reported
    assert records[0].video_path == str(root / "videos" / "1004_Juno" / f"{CLIP_B}.avi")


def test_lsmdc_wrong_column_count_names_the_line(tmp_path):
    root = write_lsmdc(tmp_path / "lsmdc")
    with (root / "LSMDC16_annos_val.csv").open("a") as f:
        f.write(f"{CLIP_A}\t00.00.32.849\tSOMEONE runs.\n")
    with pytest.raises(AnnotationError, match=r"annos_val.csv: line 2: 6 tab-separated columns.*got 3"):
        load_records("lsmdc", root, "val")


@pytest.mark.parametrize("clip", ["../../etc/passwd_x", "/etc/movie_clip", "1004_Juno/../../x_y"])
def test_lsmdc_clip_ids_leaving_the_root_are_rejected(tmp_path, clip):
    root = write_lsmdc(tmp_path / "lsmdc")
    (root / "LSMDC16_annos_val.csv").write_text(lsmdc_line(clip, "Bad."))
    with pytest.raises(AnnotationError, match="line 1: clip id.*inside the dataset root"):
        load_records("lsmdc", root, "val")


def test_lsmdc_missing_file(tmp_path):
    root = write_lsmdc(tmp_path / "lsmdc")
    (root / "LSMDC16_annos_val.csv").unlink()
    with pytest.raises(AnnotationError, match="LSMDC16_annos_val.csv: file: annotation file not found"):
        load_records("lsmdc", root, "val")


# --------------------------------------------------------------------------------------------- features


def write_features(folder: Path, ids: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {
        "experts": {
            "rgb": {"dim": 4, "fps": 1.0, "dir": "rgb"},
            "audio": {"dim": 3, "fps": 2.0, "dir": "vggish"},
        }
    }
    (folder / "features_manifest.json").write_text(json.dumps(manifest))
    (folder / "rgb").mkdir()
    (folder / "vggish").mkdir()
    for n, vid in enumerate(ids):
        np.save(
            folder / "rgb" / f"{vid}.npy", np.full((10 + n, 4), n, np.float32) + np.arange(10 + n)[:, None]
        )
        if n % 2 == 0:  # every other video lacks the audio expert
            np.save(folder / "vggish" / f"{vid}.npy", np.ones((3, 3), np.float16))
    return folder


def write_small_msrvtt(root: Path, num_videos: int = 6) -> Path:
    root.mkdir(parents=True)
    videos = [{"video_id": f"video{i}"} for i in range(num_videos)]
    sentences = [{"caption": f"clip {i}", "video_id": f"video{i}", "sen_id": i} for i in range(num_videos)]
    (root / "MSRVTT_data.json").write_text(json.dumps({"videos": videos, "sentences": sentences}))
    (root / "MSRVTT_train.9k.csv").write_text(
        "video_id\n" + "".join(f"video{i}\n" for i in range(num_videos))
    )
    return root


def test_feature_manifest_and_token_sampling(tmp_path):
    """The .npy layout `etva data import-features` reads; sampling at segment centres."""
    manifest = load_feature_manifest(write_features(tmp_path / "store", ["a", "b"]))
    assert manifest.dims == {"rgb": 4, "audio": 3} and manifest.experts["audio"].fps == 2.0
    # 11 rows sampled at segment centres: floor((i + 0.5) * 11 / 4) = 1, 4, 6, 9
    assert sample_indices(11, 4).tolist() == [1, 4, 6, 9]
    assert sample_indices(3, 6).tolist() == [0, 0, 1, 1, 2, 2]


def test_bad_feature_manifest(tmp_path):
    store = write_features(tmp_path / "store", ["a"])
    for manifest, where in [
        ({"experts": {"rgb": {"dim": 4, "fps": 1.0}}}, "experts.rgb: key 'dir'"),
        ({"experts": {"rgb": {"dim": -1, "fps": 1.0, "dir": "rgb"}}}, "experts.rgb.dim"),
        ({"experts": {"rgb": {"dim": 4, "fps": 1.0, "dir": "../../elsewhere"}}}, "experts.rgb.dir"),
        ({"expert": {}}, "key 'experts'"),
    ]:
        (store / "features_manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(AnnotationError) as info:
            load_feature_manifest(store)
        assert "features_manifest.json" in str(info.value) and where in str(info.value)
