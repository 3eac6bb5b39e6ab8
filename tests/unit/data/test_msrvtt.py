"""MSRVTT annotations in the real formats: 1k-A, 1k-B, Full, 7k; real test-set shapes; bad inputs."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from etva.data import AnnotationError, load_records
from etva.data.sources import load_split


def write_msrvtt(root: Path, num_videos: int, caps_per_video: int, lists: dict[str, list[int]]) -> Path:
    """Stand-in MSRVTT annotations: ``video<i>`` with captions ``"video <i> caption <k>"`` (sen_id k),
    sentences written in shuffled (reverse) order. ``lists`` maps a split file name to video numbers."""
    root.mkdir(parents=True, exist_ok=True)
    videos = [
        {
            "video_id": f"video{i}",
            "category": i % 20,
            "url": "u",
            "start time": 0,
            "end time": 10,
            "split": "train",
            "id": i,
        }
        for i in range(num_videos)
    ]
    sentences = [
        {"caption": f"video {i} caption {k}", "video_id": f"video{i}", "sen_id": i * caps_per_video + k}
        for i in range(num_videos)
        for k in range(caps_per_video)
    ][::-1]
    (root / "MSRVTT_data.json").write_text(json.dumps({"videos": videos, "sentences": sentences}))
    for name, ids in lists.items():
        path = root / name
        if name == "MSRVTT_JSFUSION_test.csv":
            with path.open("w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["key", "vid_key", "video_id", "sentence"])
                for n, i in enumerate(ids):
                    w.writerow([f"ret{n}", f"msr{i}", f"video{i}", f"jsfusion sentence for {i}, quoted"])
        elif name.endswith(".csv"):
            path.write_text("video_id\n" + "".join(f"video{i}\n" for i in ids))
        else:
            path.write_text("".join(f"video{i}\n" for i in ids))
    return root


@pytest.fixture
def small(tmp_path) -> Path:
    return write_msrvtt(
        tmp_path / "msrvtt",
        10,
        3,
        {
            "MSRVTT_train.9k.csv": [0, 1, 2, 3, 4, 5],
            "MSRVTT_JSFUSION_test.csv": [7, 8, 9],
            "train_list_miech.txt": [0, 1, 2, 3, 4, 5, 6],
            "test_list_miech.txt": [8, 9],
            "train_list_full.txt": [0, 1, 2, 3, 4],
            "val_list_full.txt": [5, 6],
            "test_list_full.txt": [7, 8, 9],
        },
    )


def test_1k_a_train_has_all_captions_in_sen_id_order(small):
    records = load_records("msrvtt", small, "train", "1k-A")
    assert [r.video_id for r in records] == [f"video{i}" for i in range(6)]
    assert records[2].captions == ["video 2 caption 0", "video 2 caption 1", "video 2 caption 2"]
    assert records[0].video_path == str(small / "videos" / "all" / "video0.mp4")
    assert {r.split for r in records} == {"train"} and records[0].start_s is None


def test_1k_a_test_uses_the_jsfusion_sentence(small):
    records = load_records("msrvtt", small, "test", "1k-A")
    assert [(r.video_id, r.captions) for r in records] == [
        (f"video{i}", [f"jsfusion sentence for {i}, quoted"]) for i in (7, 8, 9)
    ]


def test_1k_b_test_is_the_first_caption(small):
    records = load_records("msrvtt", small, "test", "1k-B")
    assert [r.captions for r in records] == [["video 8 caption 0"], ["video 9 caption 0"]]
    assert len(load_records("msrvtt", small, "train", "1k-B")) == 7


def test_full_splits_keep_all_captions(small):
    for split, ids in (("train", range(5)), ("val", (5, 6)), ("test", (7, 8, 9))):
        records = load_records("msrvtt", small, split, "full")
        assert [r.video_id for r in records] == [f"video{i}" for i in ids]
        assert all(len(r.captions) == 3 for r in records)


def test_7k_only_when_its_file_exists(small):
    with pytest.raises(AnnotationError, match="MSRVTT_train.7k.csv.*not found"):
        load_records("msrvtt", small, "train", "7k")
    (small / "MSRVTT_train.7k.csv").write_text("video_id\nvideo3\nvideo4\n")
    assert [r.video_id for r in load_records("msrvtt", small, "train", "7k")] == ["video3", "video4"]
    assert len(load_records("msrvtt", small, "test", "7k")) == 3


def test_unknown_subset_or_split(small):
    with pytest.raises(ValueError, match="subset"):
        load_records("msrvtt", small, "train", "2k")
    with pytest.raises(ValueError, match="no split 'val'"):
        load_records("msrvtt", small, "val", "1k-A")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_records("youtube", small, "train")


def test_load_split_from_data_config(small):
    from etva.config import DataConfig

    records, summary = load_split(DataConfig(root=str(small), subset="full"), "val", return_summary=True)
    assert len(records) == 2 and summary.num_captions == 6 and summary.subset == "full"


def test_real_test_set_shapes(tmp_path):
    """1k-A / 1k-B: 1,000 videos x 1 caption; Full: 2,990 videos x 20 captions (59,800 queries)."""
    full = {
        "train_list_full.txt": list(range(6513)),
        "val_list_full.txt": list(range(6513, 7010)),
        "test_list_full.txt": list(range(7010, 10000)),
        "MSRVTT_train.9k.csv": list(range(9000)),
        "MSRVTT_JSFUSION_test.csv": list(range(9000, 10000)),
        "train_list_miech.txt": list(range(9000)),
        "test_list_miech.txt": list(range(9000, 10000)),
    }
    root = write_msrvtt(tmp_path / "msrvtt", 10000, 20, full)
    shapes = {}
    for subset, split in [
        ("1k-A", "train"),
        ("1k-A", "test"),
        ("1k-B", "test"),
        ("full", "train"),
        ("full", "val"),
        ("full", "test"),
    ]:
        records = load_records("msrvtt", root, split, subset)
        shapes[subset, split] = (len(records), sum(len(r.captions) for r in records))
    assert shapes == {
        ("1k-A", "train"): (9000, 180000),
        ("1k-A", "test"): (1000, 1000),
        ("1k-B", "test"): (1000, 1000),
        ("full", "train"): (6513, 130260),
        ("full", "val"): (497, 9940),
        ("full", "test"): (2990, 59800),
    }


# ---------------------------------------------------------------------------------------- bad input


def test_bad_json_names_file_and_line(small):
    (small / "MSRVTT_data.json").write_text('{"videos": [\n{"video_id": "video0",}\n]}')
    with pytest.raises(AnnotationError) as info:
        load_records("msrvtt", small, "train", "1k-A")
    assert "MSRVTT_data.json" in str(info.value) and "line 2" in str(info.value)


def _edit_json(root: Path, fn) -> None:
    data = json.loads((root / "MSRVTT_data.json").read_text())
    fn(data)
    (root / "MSRVTT_data.json").write_text(json.dumps(data))


@pytest.mark.parametrize(
    "edit, where",
    [
        (lambda d: d["sentences"][3].pop("caption"), "sentences[3]: key 'caption'"),
        (lambda d: d.pop("videos"), "key 'videos'"),
        (lambda d: d["sentences"][5].update(video_id="video99"), "sentences[5].video_id"),
        (lambda d: d["sentences"][1].update(sen_id="x"), "sentences[1].sen_id"),
        (lambda d: d["videos"][2].update(video_id="../../etc/passwd"), "videos[2].video_id"),
    ],
)
def test_malformed_json_entries(small, edit, where):
    _edit_json(small, edit)
    with pytest.raises(AnnotationError) as info:
        load_records("msrvtt", small, "train", "1k-A")
    assert "MSRVTT_data.json" in str(info.value) and where in str(info.value)


def test_list_file_naming_an_unknown_video(small):
    (small / "test_list_miech.txt").write_text("video8\n\nvideo42\n")
    with pytest.raises(AnnotationError, match=r"test_list_miech.txt: line 3: .*'video42'"):
        load_records("msrvtt", small, "test", "1k-B")


def test_csv_wrong_columns_and_header(small):
    with (small / "MSRVTT_JSFUSION_test.csv").open("a") as f:
        f.write("ret9,msr9,video9\n")
    with pytest.raises(AnnotationError, match=r"JSFUSION_test.csv: line 5: 4 columns, got 3"):
        load_records("msrvtt", small, "test", "1k-A")
    (small / "MSRVTT_train.9k.csv").write_text("vid\nvideo1\n")
    with pytest.raises(AnnotationError, match=r"train.9k.csv: line 1 \(header\): columns video_id"):
        load_records("msrvtt", small, "train", "1k-A")


def test_duplicate_video_in_a_split_file(small):
    (small / "test_list_full.txt").write_text("video7\nvideo8\nvideo7\n")
    with pytest.raises(AnnotationError, match="line 3: each video once"):
        load_records("msrvtt", small, "test", "full")


def test_captions_cleaned_and_counted(small):
    def edit(d):
        for s in d["sentences"]:
            if s["video_id"] == "video1":
                s["caption"] = "   "  # all of video1's captions empty -> video dropped
            if s["video_id"] == "video2" and s["sen_id"] % 3 == 0:
                s["caption"] = "\t\n"
            if s["video_id"] == "video3" and s["sen_id"] % 3 == 1:
                s["caption"] = "a  very long\ncaption " * 20

    _edit_json(small, edit)
    records, summary = load_records(
        "msrvtt", small, "train", "1k-A", max_caption_chars=40, return_summary=True
    )
    assert [r.video_id for r in records] == ["video0", "video2", "video3", "video4", "video5"]
    assert records[1].captions == ["video 2 caption 1", "video 2 caption 2"]
    long = records[2].captions[1]
    assert len(long) <= 40 and long.startswith("a very long caption a very")
    assert (summary.empty_captions_dropped, summary.videos_without_captions) == (4, 1)
    assert summary.captions_truncated == 1 and summary.num_records == 5 and summary.num_captions == 14
    metrics = summary.as_metrics()
    assert metrics["data/train/videos_without_captions"] == 1.0
    assert metrics["data/train/missing_video_files"] == 5.0  # no mp4 files were written


def test_missing_video_files_are_counted_not_dropped(small):
    (small / "videos" / "all").mkdir(parents=True)
    (small / "videos" / "all" / "video0.mp4").write_bytes(b"x")
    records, summary = load_records("msrvtt", small, "train", "1k-A", return_summary=True)
    assert len(records) == 6 and summary.missing_video_files == 5
    assert summary.missing_examples[0].endswith("video1.mp4")


def test_symlink_out_of_the_root_is_rejected(small, tmp_path):
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(b"x")
    (small / "videos" / "all").mkdir(parents=True)
    os.symlink(outside, small / "videos" / "all" / "video3.mp4")
    with pytest.raises(AnnotationError, match="video3.*resolves to"):
        load_records("msrvtt", small, "train", "1k-A")


def test_symlinked_video_folder_is_allowed(small, tmp_path):
    disk = tmp_path / "other_disk"
    (disk / "all").mkdir(parents=True)
    (disk / "all" / "video0.mp4").write_bytes(b"x")
    os.symlink(disk, small / "videos")
    records, summary = load_records("msrvtt", small, "train", "1k-A", return_summary=True)
    assert records[0].video_path == str(small / "videos" / "all" / "video0.mp4")
    assert summary.missing_video_files == 5
