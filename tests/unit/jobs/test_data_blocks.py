"""How the Ray Data index is cut into blocks (one decode task each; the unit the training set shuffles in)."""

from ray_jobs.data import _num_blocks


def test_blocks_hold_about_16_rows():
    assert _num_blocks(160, 2) == 10
    assert _num_blocks(9000, 2) == 563


def test_a_small_split_still_gets_one_block_per_decode_task():
    assert _num_blocks(16, 2) == 2  # an evaluation shard of 16 videos decodes on both tasks
    assert _num_blocks(16, 4) == 4
    assert _num_blocks(3, 8) == 3  # never more blocks than rows
    assert _num_blocks(1, 2) == 1 and _num_blocks(0, 2) == 1


def test_very_large_sets_are_capped_at_2000_blocks():
    assert _num_blocks(100_000, 2) == 2000


def _store(tmp_path, n: int, shard: int):
    import numpy as np

    from etva.data.feature_store import FeatureStoreWriter, register_store

    w = FeatureStoreWriter(tmp_path / "appearance-x", {"k": 1}, 2, expert="appearance")
    for s in range(0, n, shard):
        ids = [f"v{i}" for i in range(s, min(n, s + shard))]
        w.write_shard(ids, [np.ones((1, 2))] * len(ids))
    register_store(tmp_path, "appearance", tmp_path / "appearance-x")
    return str(tmp_path)


def test_store_blocks_gather_row_groups_from_many_shards_when_training(tmp_path):
    """Store path: a training block is whole row groups from many shards (a shard holds neighbouring
    clips), every row in exactly one block; evaluation keeps file order."""
    from collections import Counter

    from etva.data.example import feature_stores_for_path
    from etva.data.feature_store import ROW_GROUP_CLIPS
    from ray_jobs.data import STORE_BLOCK_ROWS, _store_groups

    root = _store(tmp_path, 2000, 256)  # 8 shards of 8 row groups
    rows = [{"video_id": f"v{i}"} for i in range(2000)] + [{"video_id": "not-in-store"}]
    where = feature_stores_for_path(root)["appearance"].chunk_map()
    size = Counter(where.values())
    assert max(size.values()) == ROW_GROUP_CLIPS
    train = _store_groups(rows, root, shuffle=True, seed=0)
    assert sorted(r["video_id"] for b in train for r in b) == sorted(r["video_id"] for r in rows)
    assert train[-1] == [{"video_id": "not-in-store"}]
    for block in train[:-1]:
        assert len(block) <= STORE_BLOCK_ROWS
        assert len({where[r["video_id"]][0] for r in block}) >= 4  # shards mixed in one block
        assert len({where[r["video_id"]][0] for r in block[:64]}) >= 4  # and within one batch of it
        groups = {where[r["video_id"]] for r in block}
        assert len(block) == sum(size[g] for g in groups)  # whole row groups only
    evaluation = _store_groups(rows, root, shuffle=False, seed=0)
    assert [r["video_id"] for b in evaluation for r in b][:300] == [f"v{i}" for i in range(300)]


def test_group_blocks_hold_whole_groups_in_a_random_order():
    """train.group_batches: a block (one batch) never splits a group, every row is in one block, a block
    holds at most max_rows, and the group order depends on the seed."""
    from ray_jobs.data import group_blocks

    groups = [g for g in range(30) for _ in range(4)] + [30, 30, 30]  # 30 groups of 4 and one of 3
    rows = [{"video_index": i} for i in range(len(groups))]
    blocks = group_blocks(rows, groups, seed=0, max_rows=32)
    seen = [r["video_index"] for b in blocks for r in b]
    assert sorted(seen) == list(range(len(rows)))
    for block in blocks:
        assert len(block) <= 32
        members = {groups[r["video_index"]] for r in block}
        assert sorted(r["video_index"] for r in block) == [v for v in range(len(groups)) if groups[v] in members]
    assert sum(len(b) >= 29 for b in blocks) >= 3  # nearly full batches
    again = [r["video_index"] for b in group_blocks(rows, groups, seed=0, max_rows=32) for r in b]
    other = [r["video_index"] for b in group_blocks(rows, groups, seed=1, max_rows=32) for r in b]
    assert again == seen and other != seen


def test_group_blocks_refuse_a_group_list_of_another_length():
    import pytest

    from ray_jobs.data import group_blocks

    with pytest.raises(ValueError, match="3 group ids for 2 rows"):
        group_blocks([{}, {}], [0, 0, 1], seed=0, max_rows=8)
