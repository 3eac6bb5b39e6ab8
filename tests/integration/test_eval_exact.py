"""Evaluation scores every clip, and says what it scored: identical metrics and counts in the calling
process (a small split's default) and with 2 and 3 Train workers on a 41-video test split (41 shards
unevenly either way) (real Ray
Train, real decode), with a missing and a corrupt clip named.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from etva.config import config_to_dict, load_config
from etva.data.synth import generate_dataset

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration
N_VIDEOS, N_TEST = 137, 41  # the synthetic MSRVTT Full test split gets round(137 * 0.299) = 41 videos


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A 41-video test split with one missing and one corrupt clip, and an untrained checkpoint."""
    import torch

    from etva.model import build_model
    from etva.train.checkpoint import save_checkpoint
    from ray_jobs.prepare import prepare_splits, tokenizer_files

    root = tmp_path_factory.mktemp("shapes41")
    overrides = [f"data.root={root}", "data.subset=full", "data.synth.captions_per_video=3",
                 "train.eval_batch_size=1", "data.max_skip_fraction=0.1"]  # fmt: skip
    cfg = load_config(REPO / "ray_jobs/configs/tiny.yaml", overrides)
    summary = generate_dataset(root, N_VIDEOS, 0, cfg=cfg.data.synth, workers=2, progress=False)
    assert summary["splits"]["full/test"] == N_TEST
    test_ids = (root / "test_list_full.txt").read_text().split()
    (root / "videos/all" / f"{test_ids[0]}.mp4").unlink()  # missing: dropped while preparing
    (root / "videos/all" / f"{test_ids[1]}.mp4").write_bytes(b"\x00" * 64 + b"not a video")  # corrupt
    tok_dir = tmp_path_factory.mktemp("tok")
    tok, _ = prepare_splits(cfg, tok_dir, {"train": "train"})
    torch.manual_seed(0)
    model = build_model(cfg.model, vocab_size=len(tok))
    out = save_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "epoch_0000",
        {"model": model.state_dict()},
        {"epoch": 0, "vocab_size": len(tok)},
        config_yaml=yaml.safe_dump(config_to_dict(cfg)),
        tokenizer_files=tokenizer_files(tok_dir),
    )
    return out, test_ids


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_every_clip_scored_identically_in_process_and_with_2_3_workers(checkpoint, ray_local, tmp_path):
    from ray_jobs.evaluate import run_evaluation

    ckpt, test_ids = checkpoint
    results = {}
    for workers in (0, 2, 3):  # 0: the default for a split this small, scored in this process
        overrides = [f"ray.storage_path={tmp_path / 'ray'}"]
        if workers:  # Train workers, however small the split
            overrides += [f"ray.num_workers={workers}", "eval.in_process_max_videos=0"]
        metrics, _, unscored = run_evaluation(ckpt, "test", overrides)
        results[workers] = (metrics, unscored)
    metrics, unscored = results[0]
    assert unscored == sorted(test_ids[:2])  # the missing and the corrupt clip, by name
    assert metrics["test/num_videos"] == N_TEST - 2  # counts are what was scored, not the file's
    assert metrics["test/num_queries"] == 3 * (N_TEST - 2)
    assert metrics["test/num_unscored_videos"] == 2
    for workers in (2, 3):
        assert results[workers] == results[0], f"{workers} workers differ from the in-process score"
    # the in-process score started no Train run; the other two did, one folder each
    assert len(list((tmp_path / "ray").glob("eval-test-*"))) == 2
