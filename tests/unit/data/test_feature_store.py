"""Parquet feature store: write/read, resume, identity keys, failures, the per-id reader, and
`etva data import-features` (the .npy/.npz import)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from etva.cli import main
from etva.data.feature_store import (
    FeatureStore,
    FeatureStoreError,
    FeatureStoreWriter,
    open_stores,
    register_store,
    store_batch,
    store_dir,
    store_key,
)
from etva.data.sources.features import MANIFEST_NAME

IDENT = {"encoder": "clip", "weights": {"model.safetensors": "ab" * 32}, "decode": {"num_frames": 4}}


def _arrays(n: int, dim: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"video{i}": rng.normal(size=(1 + i % 5, dim)).astype(np.float32) for i in range(n)}


def _clip(store: FeatureStore, vid: str, max_tokens: int = 64) -> np.ndarray:
    """The (T, D) features of one clip through the store's one reader (T <= max_tokens: not sampled)."""
    feat, mask = store.read_tokens([vid], max_tokens)
    return feat[0][mask[0]]


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
        np.testing.assert_array_equal(_clip(store, vid), a)
    assert _clip(store, "empty").shape == (0, 6) and _clip(store, "nope").shape == (0, 6)  # both masked
    assert "nope" not in store.ids()
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
    got = _clip(FeatureStore(tmp_path / "s"), "video1")
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
    t = {k: v[0] for k, v in store_batch(stores, ["v1"], 8).items()}
    assert t["feat/appearance"].shape == (8, 6) and t["feat_mask/appearance"].sum() == 3
    assert t["feat/audio"].shape == (8, 4) and not t["feat_mask/audio"].any()  # unavailable, not skipped
    assert store_batch(stores, ["v0"], 8)["feat_mask/appearance"][0].all()  # 40 sampled down to 8
    with pytest.raises(FeatureStoreError, match="stores.json: not found"):
        open_stores(tmp_path / "nowhere")


def test_import_features_from_a_manifest_folder(tmp_path, capsys):
    """`etva data import-features` of a CE/MMT-style folder: identical arrays, resumable, one store each."""
    src = tmp_path / "npy"
    arrs = {"appearance": _arrays(9, dim=5), "audio": _arrays(4, dim=3, seed=1)}
    spec = {}
    for name, per_video in arrs.items():
        (src / name).mkdir(parents=True)
        for vid, a in per_video.items():
            np.save(src / name / f"{vid}.npy", a)
        spec[name] = {"dim": a.shape[1], "fps": 1.0, "dir": name}
    (src / MANIFEST_NAME).write_text(json.dumps({"experts": spec}))
    argv = ["data", "import-features", str(src), "--out", str(tmp_path / "pq"), "--shard-size", "4"]
    assert main(argv) == 0
    assert "appearance: dim 5, 9 videos stored (9 new)" in capsys.readouterr().out
    stores = open_stores(tmp_path / "pq")
    assert sorted(stores) == ["appearance", "audio"]
    for name, per_video in arrs.items():
        assert stores[name].ids() == set(per_video)
        for vid, a in per_video.items():
            np.testing.assert_array_equal(_clip(stores[name], vid), a)
    assert len(stores["appearance"].shard_files()) == 3
    assert main(argv) == 0  # again: nothing new is written
    assert "(0 new)" in capsys.readouterr().out
    assert len(FeatureStore(stores["appearance"].path).shard_files()) == 3


def test_import_features_one_array_per_split_checks_shapes_ids_and_missing(tmp_path, capsys):
    from etva.data.synth import generate_dataset

    root = tmp_path / "ds"
    generate_dataset(root, 6, 0, progress=False, workers=1)
    from etva.data import load_records

    ids = [r.video_id for s in ("train", "test") for r in load_records("msrvtt", root, s, "1k-A")]
    feats = np.random.default_rng(0).normal(size=(len(ids) - 1, 3, 4)).astype(np.float32)
    np.savez(tmp_path / "train.npz", ids=np.array(ids[:-1]), features=feats)
    out = tmp_path / "pq"
    argv = ["data", "import-features", str(tmp_path / "train.npz"), "--out", str(out), "--expert", "motion"]
    assert main([*argv, "--root", str(root)]) == 1  # the last video has no features: reported
    text = capsys.readouterr().out
    assert f"motion: 1 of {len(ids)} videos have no features: {ids[-1]}" in text
    np.testing.assert_array_equal(_clip(open_stores(out)["motion"], ids[0]), feats[0])
    # a .npy of one split with its id list; a folder where one array has the wrong width (listed, not written)
    np.save(tmp_path / "bad.npy", np.zeros((2, 3, 5), np.float16))
    (tmp_path / "ids.txt").write_text("a\nb\n")
    assert main(["data", "import-features", str(tmp_path / "bad.npy"), "--out", str(tmp_path / "p2"),
                 "--expert", "audio", "--ids", str(tmp_path / "ids.txt")]) == 0  # fmt: skip
    (tmp_path / "one").mkdir()
    np.save(tmp_path / "one" / "x.npy", np.zeros((2, 5), np.float32))
    np.save(tmp_path / "one" / "y.npy", np.zeros((2, 6), np.float32))
    assert main(["data", "import-features", str(tmp_path / "one"), "--out", str(tmp_path / "p3"),
                 "--expert", "audio"]) == 1  # fmt: skip
    assert "y.npy: expected a float array (T, 5), got float32 (2, 6)" in capsys.readouterr().out
    assert open_stores(tmp_path / "p3")["audio"].ids() == {"x"}
    no_ids = [
        "data",
        "import-features",
        str(tmp_path / "bad.npy"),
        "--out",
        str(tmp_path / "p4"),
        "--expert",
        "a",
    ]
    assert main(no_ids) == 2
    assert "needs its id list (--ids" in capsys.readouterr().err


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_read_tokens_matches_per_clip_sampling(tmp_path, dtype):
    """The vectorised gather equals, clip by clip, sample_indices over the stored (T, D) array: clips
    longer and shorter than N, T = 0, ids the store lacks, ids spread over shards in any order."""
    from etva.data.sampling import sample_indices

    rng = np.random.default_rng(1)
    arrs = {
        f"v{i}": rng.normal(size=(int(t), 5)).astype(np.float32)
        for i, t in enumerate(rng.integers(0, 30, 40))
    }
    arrs["v3"] = np.zeros((0, 5), np.float32)
    ids = list(arrs)
    w = FeatureStoreWriter(tmp_path / "s", IDENT, 5, dtype=dtype)
    for s in range(0, len(ids), 16):  # three shards
        w.write_shard(ids[s : s + 16], [arrs[i] for i in ids[s : s + 16]])
    store = FeatureStore(tmp_path / "s")
    ask = [ids[j] for j in rng.permutation(len(ids))] + ["missing"]
    feat, mask = store.read_tokens(ask, 8)
    assert feat.shape == (41, 8, 5) and feat.dtype == np.dtype(dtype) and mask.shape == (41, 8)
    for b, vid in enumerate(ask):
        a = arrs.get(vid, np.zeros((0, 5), np.float32)).astype(dtype)
        idx = sample_indices(len(a), 8) if len(a) > 8 else np.arange(len(a))
        np.testing.assert_array_equal(feat[b, : len(idx)], a[idx])
        assert (feat[b, len(idx) :] == 0).all() and mask[b].sum() == len(idx) and mask[b, : len(idx)].all()


def test_feature_values_are_not_dictionary_encoded(tmp_path):
    """Shards are written without a dictionary or statistics for the feature values (a dictionary-
    encoded float16 list read about 5x slower: benchmarks/RESULTS.md)."""
    w = FeatureStoreWriter(tmp_path / "s", IDENT, 6, dtype="float16")
    w.write_shard(["a", "b"], [np.ones((3, 6)), np.ones((2, 6))])
    col = pq.ParquetFile(FeatureStore(tmp_path / "s").shard_files()[0]).metadata.row_group(0).column(2)
    assert col.path_in_schema == "features"
    assert not col.has_dictionary_page and not col.is_stats_set


def test_layout_1_store_still_read_and_resumed_in_its_layout(tmp_path):
    """A store written before layout 2 (features as list<float>, format etva-feature-store/1) is read as
    it is, and a resumed extraction into it keeps its layout (one layout per store)."""
    import pyarrow as pa

    folder = tmp_path / "old"
    (folder / "shards").mkdir(parents=True)
    a = np.arange(12, dtype=np.float16).reshape(4, 3)
    flat = pa.array(a.reshape(-1), type=pa.float16())
    old = pa.table(  # what the layout-1 writer wrote
        {
            "video_id": ["v0", "v1"],
            "num_tokens": pa.array([4, 0], pa.int32()),
            "features": pa.ListArray.from_arrays(pa.array([0, 12, 12], pa.int32()), flat),
        }
    )
    pq.write_table(old, folder / "shards" / "part-00000-aaaaaaaa.parquet")
    manifest = {"format": "etva-feature-store/1", "key": store_key(IDENT), "identity": IDENT, "dim": 3}
    manifest.update(
        dtype="float16", expert="audio", shards=["part-00000-aaaaaaaa.parquet"], done=["v0", "v1"]
    )
    (folder / "manifest.json").write_text(json.dumps(manifest))
    np.testing.assert_array_equal(_clip(FeatureStore(folder), "v0"), a)
    assert _clip(FeatureStore(folder), "v1").shape == (0, 3)
    w = FeatureStoreWriter(folder, IDENT, 3, dtype="float16", expert="audio")
    new = w.write_shard(["v2"], [a[:2] + 1])
    assert pq.read_schema(new).field("features").type == pa.list_(pa.float16())
    assert json.loads((folder / "manifest.json").read_text())["format"] == "etva-feature-store/1"
    feat, mask = FeatureStore(folder).read_tokens(["v2", "v0", "v1"], 4)
    np.testing.assert_array_equal(feat[0, :2], a[:2] + 1)
    np.testing.assert_array_equal(feat[1], a)
    assert mask.sum(1).tolist() == [2, 4, 0]


def test_new_store_writes_binary_features(tmp_path):
    import pyarrow as pa

    w = FeatureStoreWriter(tmp_path / "s", IDENT, 3, dtype="float32")
    path = w.write_shard(["a", "b"], [np.ones((2, 3)), np.zeros((0, 3))])
    t = pq.read_table(path)
    assert t.schema.field("features").type == pa.binary() and t.column("num_tokens").to_pylist() == [2, 0]
    assert np.frombuffer(t.column("features")[0].as_py(), "<f4").reshape(2, 3).tolist() == [[1.0] * 3] * 2
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["format"] == "etva-feature-store/2"


def test_reads_only_the_row_groups_that_hold_the_ids(tmp_path):
    """A shard is written in row groups of ROW_GROUP_CLIPS clips; a reader fetches only the groups that
    hold the ids asked for and keeps them for neighbouring lookups."""
    from etva.data.feature_store import ROW_GROUP_CLIPS

    arrs = _arrays(3 * ROW_GROUP_CLIPS + 5, dim=4)
    ids = list(arrs)
    w = FeatureStoreWriter(tmp_path / "s", IDENT, 4)
    w.write_shard(ids, [arrs[i] for i in ids])  # one shard, four row groups
    store = FeatureStore(tmp_path / "s")
    assert pq.ParquetFile(store.shard_files()[0]).num_row_groups == 4
    assert store.chunk_map()[ids[ROW_GROUP_CLIPS + 1]] == (store.shard_files()[0], 1)
    np.testing.assert_array_equal(_clip(store, ids[ROW_GROUP_CLIPS + 1]), arrs[ids[ROW_GROUP_CLIPS + 1]])
    assert store._last.groups == (1,)  # one row group read, not the shard
    feat, mask = store.read_tokens([ids[-1], ids[0]], 64)
    assert store._last.groups == (0, 3)
    np.testing.assert_array_equal(feat[0, : len(arrs[ids[-1]])], arrs[ids[-1]])
    np.testing.assert_array_equal(feat[1, : len(arrs[ids[0]])], arrs[ids[0]])


def test_threads_sharing_one_reader_get_their_own_clips(tmp_path):
    """`etva search` decodes in threads that share one cached reader: every read must gather from the
    row groups it asked for, while other threads replace the reader's kept row groups all the time."""
    import sys
    import threading

    arrs = _arrays(64, dim=4)
    ids = list(arrs)
    w = FeatureStoreWriter(tmp_path / "s", IDENT, 4)
    for s in range(0, len(ids), 8):  # eight shards: each thread's reads evict the others' row groups
        w.write_shard(ids[s : s + 8], [arrs[i] for i in ids[s : s + 8]])
    store = FeatureStore(tmp_path / "s")
    errors: list[str] = []

    def reader(shard: int) -> None:
        mine = ids[8 * shard : 8 * shard + 8]
        for _ in range(300):
            try:
                feat, mask = store.read_tokens(mine, 8)
            except Exception as e:  # a gather from another thread's row groups: KeyError
                errors.append(f"{type(e).__name__}: {e}")
                return
            for b, vid in enumerate(mine):
                if not np.array_equal(feat[b][mask[b]], arrs[vid]):
                    errors.append(f"{vid}: wrong features")
                    return

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert not errors, errors[:3]
