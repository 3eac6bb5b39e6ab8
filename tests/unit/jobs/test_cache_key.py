"""The decoded cache's key changes with every setting that changes the decoded rows."""

from __future__ import annotations

from dataclasses import replace

from etva.config import DataConfig
from ray_jobs.cache import cache_key


def test_feature_store_settings_are_in_the_key(tmp_path):
    rows = [{"video_path": str(tmp_path / "video0.mp4"), "video_index": 0}]
    base = DataConfig(root=str(tmp_path))
    keys = {
        cache_key(rows, base),
        cache_key(rows, replace(base, feature_store=str(tmp_path / "store"))),
        cache_key(rows, replace(base, decode_clips=False)),
        cache_key(rows, replace(base, num_frames=base.num_frames + 1)),
    }
    assert len(keys) == 4
    assert cache_key(rows, replace(base, cache="disk", max_skip_fraction=0.5)) == cache_key(rows, base)
