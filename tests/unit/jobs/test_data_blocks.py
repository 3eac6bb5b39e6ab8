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
