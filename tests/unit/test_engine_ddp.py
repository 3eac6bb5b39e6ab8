"""Engine under 2 gloo processes: the DDP train step equals one process on the global batch, and
distributed evaluation (uneven shards, a duplicate, an empty rank) equals single-process evaluation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

from cluster import local_state
from etva.config import ExpertConfig, LossConfig, ModelConfig, TextConfig
from etva.model import build_model
from etva.train.engine import evaluate, train_step
from etva.train.losses import build_loss

WORLD, B, VOCAB = 2, 6, 40


def _model():
    torch.manual_seed(0)
    text = TextConfig(
        hidden_size=16, embedding_size=8, num_layers=1, num_heads=2, intermediate_size=32, max_position=8
    )
    experts = {k: ExpertConfig(kind=k, width=8) for k in ("appearance", "motion", "audio")}
    cfg = ModelConfig(d=16, text=text, experts=experts, fusion_heads=2, num_clusters=3, dropout=0.0)
    return build_model(cfg, VOCAB), build_loss(LossConfig(temperature=0.1))


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    attn = (torch.arange(8)[None] < torch.randint(2, 9, (B,), generator=g)[:, None]).long()
    mask = torch.ones(B, 16, dtype=torch.bool)
    mask[1] = False  # a clip without audio
    return {
        "frames": torch.randint(0, 256, (B, 3, 16, 16, 3), generator=g, dtype=torch.uint8),
        "audio_mel": torch.randn(B, 16, 8, generator=g),
        "audio_mask": mask,
        "input_ids": torch.randint(1, VOCAB, (B, 8), generator=g) * attn,
        "attention_mask": attn,
        "video_index": torch.arange(B),
        "caption_index": torch.arange(B),
    }


VKEYS = ("frames", "audio_mel", "audio_mask", "video_index")
CKEYS = ("input_ids", "attention_mask", "caption_index", "video_index")


def _sel(batch, keys, idx):
    return {k: batch[k][idx] for k in keys}


def _grads(model, loss_fn) -> dict[str, torch.Tensor]:
    named = [*model.named_parameters(), *(("loss." + n, p) for n, p in loss_fn.named_parameters())]
    return {n: p.grad.detach().clone() for n, p in named if p.grad is not None}


def _single() -> dict:
    model, loss_fn = _model()
    batch = _batch()
    loss, _ = train_step(model, loss_fn, batch)
    loss.backward()
    metrics = evaluate(model, [_sel(batch, VKEYS, slice(None))], [_sel(batch, CKEYS, slice(None))], "cpu")
    return {"loss": loss.item(), "grads": _grads(model, loss_fn), "metrics": metrics}


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model, loss_fn = _model()
        ddp = DDP(model)
        batch = _batch()
        half = slice(rank * B // 2, (rank + 1) * B // 2)
        loss, _ = train_step(ddp, loss_fn, {k: v[half] for k, v in batch.items()})
        loss.backward()
        # evaluation: rank 0 holds all videos (+ a duplicate), rank 1 none; captions uneven
        vids = [_sel(batch, VKEYS, torch.tensor([4, 0, 2])), _sel(batch, VKEYS, torch.tensor([1, 3, 5, 0]))]
        caps_idx = torch.tensor([5, 1]) if rank == 0 else torch.tensor([0, 2, 3, 4])
        metrics = evaluate(
            ddp, vids if rank == 0 else [], [_sel(batch, CKEYS, caps_idx)], "cpu", query_chunk=4
        )
        out = {"loss": loss.item(), "grads": _grads(model, loss_fn), "metrics": metrics}
        torch.save(out, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(180)
def test_ddp_engine_equals_single_process(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    mp.spawn(_worker, args=(local_state.free_ports(1)[0], str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    ref = _single()
    for r, res in enumerate(ranks):
        assert res["loss"] == pytest.approx(ref["loss"], rel=1e-5)
        assert set(res["grads"]) == set(ref["grads"])
        for name, g in ref["grads"].items():
            torch.testing.assert_close(res["grads"][name], g, atol=1e-5, rtol=1e-4, msg=f"rank {r} {name}")
        assert res["metrics"] == pytest.approx(ref["metrics"]), r
