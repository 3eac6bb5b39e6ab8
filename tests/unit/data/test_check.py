"""etva.data.check and `etva data check`: per-split counts, consistency warnings, every bad file named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from etva.cli import main
from etva.data.check import check_dataset, splits_of


def _msrvtt(root: Path, clip_dir: Path, train: list[str], test: list[str], files: dict[str, str]) -> Path:
    """A small MSRVTT layout: ``files`` maps video id -> clip in ``clip_dir`` (absent = missing)."""
    ids = sorted(set(train) | set(test))
    data = {
        "videos": [{"video_id": v, "split": "train", "id": i} for i, v in enumerate(ids)],
        "sentences": [
            {"caption": f"clip {v} caption {k}", "video_id": v, "sen_id": 2 * i + k}
            for i, v in enumerate(ids)
            for k in range(2)
        ],
    }
    root.mkdir(parents=True)
    (root / "MSRVTT_data.json").write_text(json.dumps(data))
    (root / "MSRVTT_train.9k.csv").write_text("video_id\n" + "".join(f"{v}\n" for v in train))
    rows = "".join(f"ret{i},msr{i},{v},clip {v} caption 0\n" for i, v in enumerate(test))
    (root / "MSRVTT_JSFUSION_test.csv").write_text("key,vid_key,video_id,sentence\n" + rows)
    (root / "videos" / "all").mkdir(parents=True)
    for vid, clip in files.items():
        shutil.copyfile(clip_dir / clip, root / "videos" / "all" / f"{vid}.mp4")
    return root


def test_report_names_every_bad_file_once_with_its_kind(clip_dir, tmp_path):
    files = {"video0": "tone.mp4", "video1": "truncated.mp4", "video2": "empty.mp4", "video4": "silent.mp4"}
    files["video5"] = "notes.mp4"
    root = _msrvtt(
        tmp_path / "ds", clip_dir, ["video0", "video1", "video2", "video3"], ["video4", "video5"], files
    )
    report = check_dataset("msrvtt", root, "1k-A", progress=False)
    bad = {Path(b.path).stem: b for b in report.bad_files}
    assert set(bad) == {"video1", "video2", "video3", "video5"}
    assert (bad["video2"].kind, bad["video3"].kind) == ("empty", "missing")
    assert bad["video1"].kind in ("corrupt", "truncated") and bad["video5"].kind == "not_media"
    assert bad["video5"].splits == ["test"] and bad["video1"].splits == ["train"]
    assert report.splits["train"] == {"videos": 4, "captions": 8, "missing": 1, "bad": 3}
    assert report.splits["test"] == {"videos": 2, "captions": 2, "missing": 0, "bad": 1}
    assert report.videos_checked == 6 and not report.ok and not report.warnings
    text = report.format()
    assert "FAILED" in text and all(f"{v}.mp4" in text for v in bad)


def test_consistency_warnings_and_clean_dataset_is_ok(clip_dir, tmp_path):
    files = {v: "tone.mp4" for v in ("video0", "video1", "video2")}
    root = _msrvtt(tmp_path / "ds", clip_dir, ["video0", "video1"], ["video1", "video2"], files)
    data = json.loads((root / "MSRVTT_data.json").read_text())
    data["sentences"][0]["caption"] = "   "  # video0's first caption
    (root / "MSRVTT_data.json").write_text(json.dumps(data))
    report = check_dataset("msrvtt", root, "1k-A", progress=False, workers=1)
    assert report.ok and report.videos_checked == 3  # video1 is decoded once for both splits
    assert report.warnings == [
        "train: 1 empty captions dropped, 0 videos without any caption dropped",
        "train and test share 1 videos (e.g. video1): leakage",
    ]


def test_annotation_errors_are_one_line_per_split(clip_dir, tmp_path):
    root = _msrvtt(tmp_path / "ds", clip_dir, ["video0"], ["video0"], {"video0": "tone.mp4"})
    (root / "MSRVTT_JSFUSION_test.csv").write_text("key,vid_key,video_id,sentence\nret0,msr0,video9,x\n")
    report = check_dataset("msrvtt", root, "1k-A", progress=False)
    assert set(report.annotation_errors) == {"test"} and "video9" in report.annotation_errors["test"]
    assert "\n" not in report.annotation_errors["test"] and not report.ok
    assert report.splits["train"]["videos"] == 1


def test_splits_of_each_source():
    assert splits_of("msrvtt", "full") == ["train", "val", "test"]
    assert splits_of("msrvtt", "1k-B") == ["train", "test"]
    assert splits_of("activitynet", None) == ["train", "val_1", "val_2"]
    with pytest.raises(ValueError, match="subset"):
        splits_of("msrvtt", "2k")


def test_command_exit_codes_and_json_report(clip_dir, tmp_path, capsys):
    good = _msrvtt(
        tmp_path / "good", clip_dir, ["video0"], ["video1"], {"video0": "tone.mp4", "video1": "tone.mp4"}
    )
    assert main(["data", "check", "--root", str(good), "--no-progress"]) == 0
    assert capsys.readouterr().out.strip().endswith("OK")
    bad = _msrvtt(tmp_path / "bad", clip_dir, ["video0"], ["video1"], {"video0": "tone.mp4"})
    report = tmp_path / "r.json"
    assert main(["data", "check", "--root", str(bad), "--report", str(report), "--no-progress"]) == 1
    data = json.loads(report.read_text())
    assert data["ok"] is False and [b["video_ids"] for b in data["bad_files"]] == [["video1"]]
    assert main(["data", "check", "--root", str(tmp_path / "nope")]) == 2
    assert main(["data", "check", "--root", str(good), "--subset", "2k"]) == 2
    err = capsys.readouterr().err
    assert "no such directory" in err and "unknown MSRVTT subset" in err and "Traceback" not in err
