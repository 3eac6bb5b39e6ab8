"""Cross-rank gathers for global-batch contrastive losses (torch.distributed only; no Ray).

Gradient convention (pinned by ``tests/unit/test_distributed.py``)
-----------------------------------------------------------------
:func:`gather_variable` all-gathers along dim 0 (the first dim may differ between ranks); its backward
**all-reduces (sums)** the incoming gradient over ranks and returns this rank's slice. With every rank
computing a loss ``L_r`` on the gathered (global) similarity matrix, rank ``r``'s local embeddings
``x_r`` receive ``sum_s dL_s/dx_r``. DDP then averages parameter gradients over the ``W`` ranks::

    grad(theta) = (1/W) sum_r sum_s dL_s/dx_r * dx_r/dtheta = d/dtheta [ (1/W) sum_s L_s ]

So the update is the gradient of the mean of the ranks' losses. In the usual case every rank computes
the SAME global loss ``L`` (e.g. InfoNCE over the full ``(B_global, B_global)`` matrix), and the result
is exactly ``dL/dtheta`` of one process on the whole global batch: **no loss scaling** (the loss is
used as computed, factor 1). Parameters used outside the gather (e.g. a learnable
temperature) get ``dL/dtheta`` on every rank, which DDP's average leaves unchanged, so they agree too.

(Contrast: a gather that only keeps the autograd graph of the local slice, without the all-reduce in
backward, yields ``dL/dtheta / W`` after DDP and would need the loss multiplied by ``W``.)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "is_distributed",
    "get_rank",
    "get_world_size",
    "gather_variable",
    "gather_sizes",
    "gather_objects",
    "gather_to_rank0",
]


def is_distributed() -> bool:
    """True inside an initialised torch.distributed process group."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


class _AllGatherWithGrad(torch.autograd.Function):
    """Concatenate every rank's ``x`` (first dims ``sizes``); backward = all-reduce sum + own slice."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, sizes: tuple[int, ...]) -> Tensor:
        rank = get_rank()
        ctx.offset, ctx.size = sum(sizes[:rank]), sizes[rank]
        max_n = max(sizes)
        padded = x.contiguous()
        if x.shape[0] < max_n:  # all_gather needs equal shapes: pad, then drop the padding
            pad = x.new_zeros((max_n - x.shape[0], *x.shape[1:]))
            padded = torch.cat([padded, pad], dim=0)
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)], dim=0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.contiguous().clone()  # (N_global, ...)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.offset : ctx.offset + ctx.size], None


def gather_sizes(n: int, device: torch.device | str = "cpu") -> tuple[int, ...]:
    """Every rank's ``n`` (e.g. its local batch size), in rank order."""
    if not is_distributed():
        return (n,)
    local = torch.tensor([n], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(local) for _ in range(get_world_size())]
    dist.all_gather(sizes, local)
    return tuple(int(s.item()) for s in sizes)


def gather_variable(x: Tensor) -> Tensor:
    """All-gather ``x`` along dim 0, differentiably; the first dim may differ between ranks (padded).

    Args:
        x: (n_rank, ...) local tensor; the other dims must agree across ranks.
    Returns:
        (sum of n_rank, ...) in rank order, differentiable w.r.t. the local slice.
    """
    if not is_distributed():
        return x
    return _AllGatherWithGrad.apply(x, gather_sizes(x.shape[0], x.device))


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's picklable ``obj`` (keep it small), in rank order; ``[obj]`` when not distributed."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_to_rank0(x: Tensor) -> Tensor | None:
    """Concatenate every rank's ``x`` along dim 0 on rank 0 only (not differentiable).

    Other ranks send their slice (point to point) and get None, so only rank 0 ever holds the whole
    tensor (an all-gather would put it on every rank), and it receives each slice straight into its
    place in the result (no padded or flat staging buffer). The first dim may differ between ranks;
    bool tensors travel as uint8. Identity when not distributed.

    Args:
        x: (n_rank, ...) local tensor on this rank's communication device; other dims agree over ranks.
    Returns:
        (sum of n_rank, ...) in rank order on rank 0 (same device as ``x``), None on the other ranks.
    """
    if not is_distributed():
        return x
    sizes = gather_sizes(x.shape[0], x.device)
    is_bool = x.dtype == torch.bool
    send = (x.to(torch.uint8) if is_bool else x).contiguous()
    if get_rank() != 0:
        if send.shape[0] > 0:
            dist.send(send, dst=0)
        return None
    out = send.new_empty((sum(sizes), *send.shape[1:]))
    out[: sizes[0]] = send
    offset = sizes[0]
    for src, n in enumerate(sizes[1:], start=1):
        if n > 0:
            dist.recv(out[offset : offset + n], src=src)  # a contiguous row block of ``out``
        offset += n
    return out.bool() if is_bool else out
