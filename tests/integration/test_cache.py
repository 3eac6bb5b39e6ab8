"""Decoded-example cache (data.cache): the same rows as decoding, decoded once, keyed by the settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from etva.config import load_config
from etva.data.synth import generate_dataset

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from ray_jobs.prepare import prepare_splits

    root = tmp_path_factory.mktemp("shapes")
    cfg = load_config(REPO / "ray_jobs/configs/tiny.yaml", [f"data.root={root}"])
    generate_dataset(root, 24, 0, cfg=cfg.data.synth, workers=2, progress=False)
    _, splits = prepare_splits(cfg, tmp_path_factory.mktemp("tok"), {"train": "train"})
    return cfg, splits["train"]


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _rows(ds) -> dict[int, dict]:
    out = {}
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for i, v in enumerate(batch["video_index"]):
            out[int(v)] = {k: np.asarray(col[i]) for k, col in batch.items()}
    return out


def _build(cfg, split, storage, cache, **data):
    import dataclasses

    from ray_jobs.data import build_video_dataset

    data_cfg = dataclasses.replace(cfg.data, cache=cache, **data)
    return build_video_dataset(
        split.records,
        data_cfg,
        cfg.ray,
        captions=split.captions,
        shuffle=True,
        storage=str(storage),
        name="train",
    )


def test_disk_and_memory_cache_give_the_decoded_rows_and_decode_once(prepared, ray_local, tmp_path):
    cfg, split = prepared
    reference = _rows(_build(cfg, split, tmp_path, "none"))
    assert sorted(reference) == list(range(len(split.records)))
    for cache in ("memory", "disk"):
        rows = _rows(_build(cfg, split, tmp_path, cache))
        assert sorted(rows) == sorted(reference), cache
        for v, row in reference.items():
            for key, value in row.items():
                np.testing.assert_array_equal(rows[v][key], value, err_msg=f"{cache} {key}")
    folders = list((tmp_path / "decoded-cache").iterdir())
    assert len(folders) == 1 and (folders[0] / "_COMPLETE").is_file()
    stamp = (folders[0] / "_COMPLETE").stat().st_mtime_ns
    again = _rows(_build(cfg, split, tmp_path, "disk"))  # a later epoch, trial or resumed run
    assert sorted(again) == sorted(reference)
    assert (folders[0] / "_COMPLETE").stat().st_mtime_ns == stamp, "the cache was written again"
    _rows(_build(cfg, split, tmp_path, "disk", num_frames=cfg.data.num_frames + 1))
    assert len(list((tmp_path / "decoded-cache").iterdir())) == 2, "other decode settings, other cache"
    assert not [p for p in (tmp_path / "decoded-cache").iterdir() if p.name.startswith(".")]


def test_cache_that_does_not_fit_is_refused_before_decoding(prepared, ray_local, tmp_path):
    """64 frames of 16384^2 pixels per clip: terabytes decoded, refused at once (nothing is decoded)."""
    cfg, split = prepared
    huge = {"num_frames": 64, "frame_size": 16384}
    with pytest.raises(ValueError, match=r"data\.cache=memory would hold about .* GiB .*Set data\.cache=disk"):
        _build(cfg, split, tmp_path, "memory", **huge)
    with pytest.raises(ValueError, match=r"data\.cache=disk would write about .* GiB .* free\."):
        _build(cfg, split, tmp_path / "ray", "disk", **huge)
    assert not (tmp_path / "ray" / "decoded-cache").exists()


@pytest.mark.parametrize("cache", ["none", "memory"])
def test_group_batches_reach_the_worker_as_whole_groups(prepared, ray_local, tmp_path, cache):
    """train.group_batches: each block is one batch of whole groups (a target with its distractors), the
    blocks read in a random order; a short last group does not shift the others."""
    import dataclasses

    from ray_jobs.batches import train_rows
    from ray_jobs.data import build_video_dataset

    cfg, split = prepared
    groups = [i // 4 for i in range(len(split.records))]  # groups of four consecutive videos (one short)
    cfg = dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, cache=cache),
        train=dataclasses.replace(cfg.train, group_batches=True, batch_size=8),
    )
    ds = build_video_dataset(
        split.records, cfg.data, cfg.ray, captions=split.captions, shuffle=True, storage=str(tmp_path),
        name="train", groups=groups, group_batch=8,
    )  # fmt: skip
    orders = []
    for epoch in range(2):
        batches = [np.asarray(b["video_index"]).tolist() for b in train_rows(ds, cfg, epoch, 0)]
        assert all(len(b) <= 8 for b in batches) and sum(map(len, batches)) == len(split.records)
        for batch in batches:
            members = {groups[v] for v in batch}
            assert sorted(batch) == sorted(v for v in range(len(groups)) if groups[v] in members), batch
        orders.append(batches)
    assert sorted(map(sorted, orders[0])) == sorted(map(sorted, orders[1]))  # the same batches each epoch
