"""Parquet feature store: write/read, resume, identity keys, failures, and the .npy import."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from etva.data.feature_store import (
    FeatureStore,
    FeatureStoreError,
    FeatureStoreWriter,
    import_npy_store,
    open_stores,
    register_store,
    store_dir,
    store_key,
    store_tokens,
)
from etva.data.sources.features import MANIFEST_NAME

IDENT = {"encoder": "clip", "weights": {"model.safetensors": "ab" * 32}, "decode": {"num_frames": 4}}


def _arrays(n: int, dim: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"video{i}": rng.normal(size=(1 + i % 5, dim)).astype(np.float32) for i in range(n)}


def test_write_read_round_trip(tmp_path):
    arrs = _arrays(7)
    folder = store_dir(tmp_path, "appearance", IDENT)
    w = FeatureStoreWriter(folder, IDENT, 6, expert="appearance")
    ids = list(arrs)
    w.write_shard(ids[:4], [arrs[i] for i in ids[:4]])
    w.write_shard(ids[4:], [arrs[i] for i in ids[4:]])
    w.write_shard(["empty"], [np.zeros((0, 6), np.float32)])  # done, but no features (no audio, say)
    store = FeatureStore(folder)
    assert store.ids() == {*ids, "empty"} and store.dim == 6
    for vid, a in arrs.items():
        np.testing.assert_array_equal(store.get(vid), a)
    assert store.get("empty").shape == (0, 6) and store.get("nope") is None
    man = json.loads((folder / "manifest.json").read_text())
    assert man["num_done"] == 8 and man["key"] == store_key(IDENT) and len(man["shards"]) == 3
    assert folder.name == f"appearance-{store_key(IDENT)}"
    # Parquet shards are plain tables any reader (Ray Data read_parquet) understands
    t = pq.read_table(store.shard_files()[0])
    assert t.column_names == ["video_id", "num_tokens", "features"] and t.num_rows == 4


def test_float16_store(tmp_path):
    arrs = _arrays(3)
    w = FeatureStoreWriter(tmp_path / "s", IDENT, 6, dtype="float16")
    w.write_shard(list(arrs), list(arrs.values()))
    got = FeatureStore(tmp_path / "s").get("video1")
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, arrs["video1"].astype(np.float16))
    with pytest.raises(FeatureStoreError, match="dtype 'int8'"):
        FeatureStoreWriter(tmp_path / "t", IDENT, 6, dtype="int8")


def test_resume_skips_done_and_never_duplicates(tmp_path):
    arrs = _arrays(6)
    ids = list(arrs)
    w = FeatureStoreWriter(tmp_path / "s", IDENT, 6)
    w.write_shard(ids[:3], [arrs[i] for i in ids[:3]])
    (tmp_path / "s" / "shards" / ".part-00009-dead.parquet.tmp").write_bytes(b"half a shard")
    w2 = FeatureStoreWriter(tmp_path / "s", IDENT, 6)  # a new job on the same store
    assert w2.done == set(ids[:3])
    assert not list((tmp_path / "s" / "shards").glob(".*.tmp"))  # unfinished shard removed
    assert w2.write_shard(ids[:2], [arrs[i] for i in ids[:2]]) is None  # all done: nothing written
    w2.write_shard(ids, [arrs[i] for i in ids])  # only the 3 new ones go in
    all_ids = [
        i
        for f in FeatureStore(tmp_path / "s").shard_files()
        for i in pq.read_table(f)["video_id"].to_pylist()
    ]
    assert sorted(all_ids) == sorted(ids)


def test_changed_identity_is_a_different_store(tmp_path):
    other = {**IDENT, "decode": {"num_frames": 8}}
    assert store_dir(tmp_path, "a", IDENT) != store_dir(tmp_path, "a", other)
    FeatureStoreWriter(tmp_path / "s", IDENT, 6)
    with pytest.raises(FeatureStoreError, match="identity changed"):
        FeatureStoreWriter(tmp_path / "s", other, 6)


def test_failures_recorded_then_cleared(tmp_path):
    w = FeatureStoreWriter(tmp_path / "s", IDENT, 2)
    w.record_failures({"bad": "DecodeError: truncated", "late": "DecodeError: x"})
    w.write_shard(["late"], [np.ones((1, 2))])
    man = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert man["failed"] == {"bad": "DecodeError: truncated"}
    assert FeatureStoreWriter(tmp_path / "s", IDENT, 2).failed == {"bad": "DecodeError: truncated"}


def test_open_stores_and_tokens(tmp_path):
    a = store_dir(tmp_path, "appearance", IDENT)
    wa = FeatureStoreWriter(a, IDENT, 6, expert="appearance")
    wa.write_shard(["v0", "v1"], [np.ones((40, 6)), np.ones((3, 6))])
    b = store_dir(tmp_path, "audio", {"x": 1})
    FeatureStoreWriter(b, {"x": 1}, 4, expert="audio").write_shard(["v0"], [np.ones((2, 4))])
    register_store(tmp_path, "appearance", a)
    register_store(tmp_path, "audio", b)
    stores = open_stores(tmp_path)
    assert sorted(stores) == ["appearance", "audio"]
    assert list(open_stores(a)) == ["appearance"]
    t = store_tokens(stores, "v1", 8)
    assert t["feat/appearance"].shape == (8, 6) and t["feat_mask/appearance"].sum() == 3
    assert t["feat/audio"].shape == (8, 4) and not t["feat_mask/audio"].any()  # unavailable, not skipped
    assert store_tokens(stores, "v0", 8)["feat_mask/appearance"].all()  # 40 sampled down to 8
    with pytest.raises(FeatureStoreError, match="stores.json: not found"):
        open_stores(tmp_path / "nowhere")


def test_npy_store_imports_identical_arrays(tmp_path):
    src = tmp_path / "npy"
    arrs = {"appearance": _arrays(9, dim=5), "audio": _arrays(4, dim=3, seed=1)}
    spec = {}
    for name, per_video in arrs.items():
        (src / name).mkdir(parents=True)
        for vid, a in per_video.items():
            np.save(src / name / f"{vid}.npy", a)
        spec[name] = {"dim": a.shape[1], "fps": 1.0, "dir": name}
    (src / MANIFEST_NAME).write_text(json.dumps({"experts": spec}))
    out = import_npy_store(src, tmp_path / "pq", shard_size=4)
    assert sorted(out) == ["appearance", "audio"]
    stores = open_stores(tmp_path / "pq")
    for name, per_video in arrs.items():
        assert stores[name].ids() == set(per_video)
        for vid, a in per_video.items():
            np.testing.assert_array_equal(stores[name].get(vid), a)
    assert len(stores["appearance"].shard_files()) == 3
    import_npy_store(src, tmp_path / "pq", shard_size=4)  # again: nothing new is written
    assert len(FeatureStore(out["appearance"]).shard_files()) == 3
