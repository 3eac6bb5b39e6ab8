"""Cross-rank gathers: 2 gloo processes + DDP give the same gradients as one process on the global batch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from cluster import local_state
from etva.distributed import (
    gather_objects,
    gather_to_rank0,
    gather_variable,
    get_rank,
    get_world_size,
    is_distributed,
)
from etva.train.losses import infonce_loss

WORLD = 2
GLOBAL_B = 8
UNEVEN = (3, 5)  # per-rank batch sizes for the gather_variable run


class Towers(nn.Module):
    """Tiny text/video towers and a learnable log-temperature."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.text = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4))
        self.video = nn.Linear(5, 4)
        self.log_t = nn.Parameter(torch.tensor(-1.0))

    def forward(self, text: torch.Tensor, video: torch.Tensor):
        t = nn.functional.normalize(self.text(text), dim=-1)
        v = nn.functional.normalize(self.video(video), dim=-1)
        return t, v


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(GLOBAL_B, 6, generator=g), torch.randn(GLOBAL_B, 5, generator=g)


def _loss(model: nn.Module, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    log_t = model.module.log_t if isinstance(model, DDP) else model.log_t
    return infonce_loss(t @ v.T, log_t.exp())  # no loss scaling (etva.distributed docstring)


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    named = model.module.named_parameters() if isinstance(model, DDP) else model.named_parameters()
    return {n: p.grad.detach().clone() for n, p in named}


def _reference_grads() -> dict[str, torch.Tensor]:
    model = Towers()
    text, video = _data()
    _loss(model, *model(text, video)).backward()
    return _grads(model)


def _ddp_step(gather, bounds: tuple[int, int]) -> dict[str, torch.Tensor]:
    model = DDP(Towers())
    text, video = _data()
    lo, hi = bounds
    t, v = model(text[lo:hi], video[lo:hi])  # this rank's share of the global batch
    t_all, v_all = gather(t), gather(v)  # (GLOBAL_B, 4) with grad for the local slice
    assert t_all.shape == (GLOBAL_B, 4)
    _loss(model, t_all, v_all).backward()
    return _grads(model)


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        half = GLOBAL_B // WORLD
        result = {
            "rank": get_rank(),
            "world": get_world_size(),
            "even": _ddp_step(gather_variable, (rank * half, (rank + 1) * half)),
            "uneven": _ddp_step(gather_variable, (sum(UNEVEN[:rank]), sum(UNEVEN[: rank + 1]))),
            "objects": gather_objects({"rank": rank, "name": f"w{rank}"}),
            # rank 0 sends 0 rows: padding and empty slices
            "variable": gather_variable(torch.full((rank * 2, 3), float(rank + 1))),
            # rank 0 only: uneven sizes (padding), bool travels as uint8
            "to_rank0": gather_to_rank0(torch.arange(3 * (rank + 1), dtype=torch.float32).view(-1, 3) + rank),
            "to_rank0_bool": gather_to_rank0(torch.tensor([rank == 0, True, rank == 1])[: rank + 2]),
        }
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(local_state.free_ports(1)[0], str(out_dir)), nprocs=WORLD, join=True)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("run", ["even", "uneven"])
def test_ddp_grads_equal_single_process_global_batch(rank_results: list[dict], run: str) -> None:
    ref = _reference_grads()
    for res in rank_results:
        assert set(res[run]) == set(ref)
        for name, grad in ref.items():
            torch.testing.assert_close(res[run][name], grad, msg=f"{run} rank {res['rank']} {name}")


def test_gather_objects_and_variable(rank_results: list[dict]) -> None:
    for r, res in enumerate(rank_results):
        assert (res["rank"], res["world"]) == (r, WORLD)
        assert res["objects"] == [{"rank": 0, "name": "w0"}, {"rank": 1, "name": "w1"}]
        torch.testing.assert_close(res["variable"], torch.full((2, 3), 2.0))
    assert rank_results[1]["to_rank0"] is None and rank_results[1]["to_rank0_bool"] is None
    expected = torch.tensor([[0.0, 1, 2], [1, 2, 3], [4, 5, 6]])
    torch.testing.assert_close(rank_results[0]["to_rank0"], expected)
    assert rank_results[0]["to_rank0_bool"].tolist() == [True, True, False, True, True]


def test_single_process_is_identity() -> None:
    assert not is_distributed() and get_rank() == 0 and get_world_size() == 1
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_variable(x) is x
    assert gather_objects("a") == ["a"]
    assert gather_to_rank0(x) is x
