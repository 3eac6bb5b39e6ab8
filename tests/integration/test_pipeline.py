"""Ray Data pipeline -> 2-worker TorchTrainer on the synthetic shapes set (real decode, real Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from etva.config import load_config
from etva.data.synth import generate_dataset

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    cfg = load_config(
        REPO / "ray_jobs/configs/tiny.yaml", [f"data.root={root}", "data.max_skip_fraction=0.5"]
    )
    s = cfg.data.synth
    generate_dataset(root, 24, 0, cfg=s, workers=2, progress=False)
    # one broken clip (present, not empty, not a video: found only when decoded): it must be skipped,
    # counted and named, never crash a worker
    broken = sorted((root / "videos/all").glob("*.mp4"))[0]
    broken.write_bytes(b"\x00" * 64 + b"this is not an mp4 file")
    return cfg, broken.stem


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _loop(config):
    import ray.train

    from etva.config import config_from_dict
    from ray_jobs.batches import EpochPrefetch, SkipTracker, train_batches, train_rows
    from ray_jobs.data import eval_shard_name

    cfg = config_from_dict(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    shard = ray.train.get_dataset_shard("train")
    seen, early = {}, None
    for epoch in range(2):
        tracker = SkipTracker()
        order, shapes = [], {}
        for batch in train_batches(shard, cfg, epoch, rank, world, tracker, early):
            order += [int(v) for v in batch["video_index"]]
            shapes = {k: [list(np.shape(v)), str(np.asarray(v).dtype)] for k, v in batch.items()}
            assert np.all(batch["input_ids"][:, 0] == 2), "captions start with [CLS]"
        seen[epoch] = {"order": order, "skipped": sorted(tracker.skipped), "shapes": shapes}
        if epoch == 0:  # epoch 1 is read ahead, as the recipe does during evaluation
            early = EpochPrefetch(train_rows(shard, cfg, 1, rank), 1)
    val = ray.train.get_dataset_shard(eval_shard_name("val", rank))
    torch_batches = list(val.iter_torch_batches(batch_size=4))
    seen["val_videos"] = sorted(int(v) for b in torch_batches for v in b["video_index"])
    seen["val_types"] = {k: str(v.dtype) for k, v in torch_batches[0].items()}
    Path(config["out"], f"rank{rank}.json").write_text(json.dumps(seen))
    ray.train.report({"done": 1})


def test_two_workers_consume_the_pipeline(tiny_cfg, ray_local, tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from etva.config import config_to_dict
    from ray_jobs.prepare import build_datasets, dataset_config, prepare_splits

    cfg, broken_id = tiny_cfg
    tok, prepared = prepare_splits(cfg, tmp_path / "tok", {"train": "train", "val": "test"})
    train_ids = prepared["train"].video_ids
    trainer = TorchTrainer(
        _loop,
        train_loop_config={"cfg": config_to_dict(cfg), "out": str(tmp_path)},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        run_config=RunConfig(name="pipeline-test", storage_path=str(tmp_path / "ray")),
        datasets=build_datasets(cfg, prepared),
        dataset_config=dataset_config(),
    )
    trainer.fit()
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    L, T, S = cfg.data.max_text_len, cfg.data.num_frames, cfg.data.frame_size
    for epoch in ("0", "1"):
        both = ranks[0][epoch]["order"] + ranks[1][epoch]["order"]
        assert len(both) == len(set(both)), "a video was served twice in one epoch"
        assert set(both) <= set(range(len(train_ids)))
        # drop_last may leave out less than one batch per rank; the broken clip is skipped
        assert len(both) >= len(train_ids) - 1 - 2 * cfg.train.batch_size
        shapes = ranks[0][epoch]["shapes"]
        assert shapes["frames"] == [[shapes["frames"][0][0], T, S, S, 3], "uint8"]
        assert shapes["input_ids"][0][1] == L and shapes["input_ids"][1] == "int64"
        assert shapes["audio_mask"][1] == "bool"
    assert ranks[0]["0"]["order"] != ranks[0]["1"]["order"], "same order in two epochs"
    if broken_id in train_ids:
        # the broken clip is skipped (counted) when it arrives, or never arrives when it falls into the
        # partial last batch that drop_last leaves out; it is never served as a training example
        broken = train_ids.index(broken_id)
        for epoch in ("0", "1"):
            skipped = set(ranks[0][epoch]["skipped"]) | set(ranks[1][epoch]["skipped"])
            served = set(ranks[0][epoch]["order"]) | set(ranks[1][epoch]["order"])
            assert skipped <= {broken} and broken not in served
    # evaluation: every validation video reaches exactly one rank (one exact shard per rank)
    val = sorted(ranks[0]["val_videos"] + ranks[1]["val_videos"])
    assert val == list(range(len(prepared["val"].records)))
    assert ranks[0]["val_types"]["frames"] == "torch.uint8"
