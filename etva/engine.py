"""Training and evaluation loops. Torch only: no Ray, no MLflow; progress goes to a ``report`` callable.

Training step (cross-rank negatives): every rank encodes its local batch through ``model(batch)``
(the DDP wrapper when distributed, so gradients are synchronised), the embeddings are gathered with
:func:`etva.distributed.gather_variable` (differentiable; backward all-reduces, see that module's
gradient convention: no loss scaling), and the loss is computed on the global ``(B, B)`` matrix.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from etva.config import OptimConfig
from etva.distributed import gather_objects, gather_variable, get_rank, get_world_size
from etva.model.etva import ETVA, TextEmbedding, VideoEmbedding
from etva.model.text import TextEncoder
from etva.retrieval import FusedScorer, chunked_retrieval_metrics, score_all

__all__ = [
    "move_batch",
    "gather_embedding",
    "train_step",
    "train_epoch",
    "evaluate",
    "build_optimizer",
    "build_scheduler",
]

log = logging.getLogger(__name__)

Report = Callable[[dict[str, float]], None]


def move_batch(batch: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    """numpy arrays and tensors -> tensors on ``device``; other values (e.g. strings) unchanged."""
    out: dict[str, Any] = {}
    for k, v in batch.items():
        if isinstance(v, np.ndarray) and v.dtype.kind in "biuf":
            v = torch.from_numpy(np.ascontiguousarray(v))
        if isinstance(v, Tensor):
            v = v.to(device, non_blocking=True)
        out[k] = v
    return out


def _unwrap(model: nn.Module) -> ETVA:
    return getattr(model, "module", model)  # DDP / FSDP wrappers keep the model in .module


def gather_embedding(emb: TextEmbedding | VideoEmbedding):
    """All-gather every field across ranks (differentiable for float fields); identity if single."""
    if get_world_size() == 1:
        return emb

    def one(x: Tensor) -> Tensor:
        if x.dtype == torch.bool:
            return gather_variable(x.to(torch.uint8)).bool()
        return gather_variable(x)

    return emb.map(one)


def train_step(model: nn.Module, loss_fn: nn.Module, batch: dict[str, Tensor]):
    """Forward + global-batch loss (no backward). Returns ``(total, parts)``."""
    core = _unwrap(model)
    text, video = model(batch)  # through DDP's forward
    text, video = gather_embedding(text), gather_embedding(video)
    sims = core.similarity(text, video)  # (B_global, B_global) each
    return loss_fn({k: sims[k] for k in core.loss_keys})


def _timed(batches: Iterable[dict]) -> Iterator[tuple[dict, float]]:
    """Yield (batch, seconds spent waiting for it)."""
    it = iter(batches)
    while True:
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            return
        yield batch, time.perf_counter() - t0


def train_epoch(
    model: nn.Module,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    batches: Iterable[dict],
    device: torch.device | str,
    *,
    epoch: int,
    log_every: int = 10,
    report: Report | None = None,
    grad_clip: float = 1.0,
) -> dict[str, float]:
    """One pass over ``batches``. Returns averaged loss parts and throughput/data-stall figures.

    ``report`` (if given) receives running averages every ``log_every`` steps.
    """
    model.train()
    loss_fn.train()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    sums: dict[str, float] = {}
    steps = clips = 0
    wait_s = step_s = 0.0
    t_epoch = time.perf_counter()
    for batch, waited in _timed(batches):
        t0 = time.perf_counter()
        batch = move_batch(batch, device)
        total, parts = train_step(model, loss_fn, batch)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if grad_clip and grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        steps += 1
        clips += int(batch["input_ids"].shape[0])
        wait_s += waited
        step_s += time.perf_counter() - t0
        for k, v in {"loss": total.detach(), **parts}.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        if log_every and steps % log_every == 0:
            running = {f"{k}": v / steps for k, v in sums.items()}
            running.update(epoch=epoch, step=steps, lr=optimizer.param_groups[0]["lr"])
            log.info("epoch %d step %d loss %.4f", epoch, steps, running["loss"])
            if report is not None:
                report(running)
    elapsed = time.perf_counter() - t_epoch
    if steps == 0:
        log.warning("train_epoch %d: no batches", epoch)
    out = {k: v / max(steps, 1) for k, v in sums.items()}
    out.update(
        steps=steps,
        clips=clips,
        clips_per_s=clips / elapsed if elapsed > 0 else 0.0,
        global_clips_per_s=clips * get_world_size() / elapsed if elapsed > 0 else 0.0,
        step_time_s=step_s / max(steps, 1),
        data_wait_s=wait_s,
        data_stall_share=wait_s / (wait_s + step_s) if wait_s + step_s > 0 else 0.0,
        epoch_time_s=elapsed,
        lr=optimizer.param_groups[0]["lr"],
    )
    return out


def _gather_stream(parts: list, cls, indices: list[list[Tensor]], device) -> tuple[Any, list[Tensor]]:
    """Concatenate this rank's encoded chunks and gather them (and their index columns) from all ranks.

    Returns ``(embedding or None, [index tensors])``; ``None`` only when no rank encoded anything.
    """
    local = cls.cat(parts) if parts else None
    idx = [torch.cat(col) if col else torch.zeros(0, dtype=torch.int64) for col in indices]
    if get_world_size() == 1:
        return local, idx
    # a rank with nothing to encode still joins the collectives with empty tensors of the right shape
    spec = None if local is None else local.map(lambda t: t[:0].cpu())
    templates = [s for s in gather_objects(spec) if s is not None]
    if not templates:
        return None, idx
    if local is None:
        local = templates[0].to(device)
    return gather_embedding(local), [gather_variable(i.to(device)).cpu() for i in idx]


def _device_of(emb) -> torch.device:
    return next(t for t in vars(emb).values() if t is not None).device


def _first_per_index(idx: Tensor) -> Tensor:
    """Positions keeping the first occurrence of every index value, ordered by that value."""
    order = torch.argsort(idx, stable=True)
    keep = torch.ones_like(order, dtype=torch.bool)
    keep[1:] = idx[order][1:] != idx[order][:-1]
    return order[keep]


@torch.no_grad()
def _encode_streams(core: ETVA, video_batches, caption_batches, device):
    vids, vidx, caps, cidx, cvid = [], [], [], [], []
    for batch in video_batches:
        b = move_batch(batch, device)
        vids.append(core.encode_video(b))
        vidx.append(b["video_index"].long().cpu())
    for batch in caption_batches:
        b = move_batch(batch, device)
        caps.append(core.encode_text(b["input_ids"], b["attention_mask"]))
        cidx.append(b["caption_index"].long().cpu())
        cvid.append(b["video_index"].long().cpu())
    return (vids, [vidx]), (caps, [cidx, cvid])


def _score(core: ETVA, text, video, query_chunk, video_chunk, score_key) -> np.ndarray:
    """All-pairs scores in blocks: ``fused`` through one GEMM per block (FusedScorer, same values
    as ``core.similarity(...)["fused"]``), any other key through ``core.similarity``."""
    if score_key == "fused":
        score_fn = FusedScorer.from_embeddings(text, video, alpha=core.alpha, normalized=True)
    else:

        def score_fn(qs: slice, vs: slice) -> Tensor:
            return core.similarity(text[qs], video[vs])[score_key]

    return score_all(score_fn, len(text), len(video), query_chunk, video_chunk)


def _rank_zero_metrics(core, video, vid_idx, text, cap_idx, cap_vid, ties, chunks, key):
    """Dedupe, order by index, map captions to columns, score and rank (rank 0 only)."""
    if video is None or text is None or len(video) == 0 or len(text) == 0:
        raise ValueError(
            f"evaluate: nothing to score ({0 if video is None else len(video)} videos, "
            f"{0 if text is None else len(text)} captions)"
        )
    sel_v = _first_per_index(vid_idx)
    video, vid_idx = video[sel_v.to(_device_of(video))], vid_idx[sel_v]
    sel_c = _first_per_index(cap_idx)
    text, cap_vid = text[sel_c.to(_device_of(text))], cap_vid[sel_c]
    column = {int(v): j for j, v in enumerate(vid_idx.tolist())}
    has_video = torch.tensor([int(v) in column for v in cap_vid.tolist()], dtype=torch.bool)
    if not bool(has_video.all()):
        log.warning(
            "evaluate: %d captions whose video was not encoded (skipped clip) are dropped",
            int((~has_video).sum()),
        )
        text, cap_vid = text[has_video.to(_device_of(text))], cap_vid[has_video]
    q2v = np.array([column[int(v)] for v in cap_vid.tolist()], dtype=np.int64)
    sim = _score(core, text, video, chunks[0], chunks[1], key)  # (Q, V) float32, filled block by block
    out = chunked_retrieval_metrics(sim, q2v, ties=ties, query_chunk=chunks[0])
    out.update(num_videos=float(len(video)), num_queries=float(len(text)))
    return out


def evaluate(
    model: nn.Module,
    video_batches: Iterable[dict],
    caption_batches: Iterable[dict],
    device: torch.device | str,
    *,
    query_chunk: int = 2048,
    video_chunk: int | None = None,
    ties: str = "average",
    score_key: str = "fused",
) -> dict[str, float]:
    """Encode every video and caption once, gather across ranks, score all pairs, compute metrics.

    Videos are deduplicated by ``video_index`` (a padding sampler may repeat some) and ordered by it;
    captions likewise by ``caption_index``; a caption's ground truth is its ``video_index``.
    Returns the ``etva.metrics.retrieval_metrics`` keys (t2v_R1 ... v2t_MnR) plus ``num_videos`` and
    ``num_queries``; every rank returns rank 0's numbers.
    """
    core = _unwrap(model)
    was_training = core.training
    core.eval()
    (vids, vcols), (caps, ccols) = _encode_streams(core, video_batches, caption_batches, device)
    if was_training:
        core.train()
    video, (vid_idx,) = _gather_stream(vids, VideoEmbedding, vcols, device)
    text, (cap_idx, cap_vid) = _gather_stream(caps, TextEmbedding, ccols, device)
    if get_rank() != 0:
        return gather_objects(None)[0]
    with torch.no_grad():
        metrics = _rank_zero_metrics(
            core, video, vid_idx, text, cap_idx, cap_vid, ties, (query_chunk, video_chunk), score_key
        )
    if get_world_size() > 1:
        gather_objects(metrics)
    return metrics


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW; text encoder parameters at ``lr * text_lr_scale``; no weight decay on 0/1-D params.

    ``model`` may be any module containing the ETVA model (e.g. ``ModuleList([model, loss_fn])``);
    text-encoder parameters are found by module type, so wrapping does not matter.
    """
    text_ids = {id(p) for m in model.modules() if isinstance(m, TextEncoder) for p in m.parameters()}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        groups.setdefault((id(p) in text_ids, p.ndim >= 2), []).append(p)
    param_groups = [
        {
            "params": ps,
            "lr": cfg.lr * (cfg.text_lr_scale if is_text else 1.0),
            "weight_decay": cfg.weight_decay if decay else 0.0,
            "name": f"{'text' if is_text else 'other'}_{'decay' if decay else 'no_decay'}",
        }
        for (is_text, decay), ps in sorted(groups.items())
    ]
    if not param_groups:
        raise ValueError("build_optimizer: the model has no trainable parameters")
    return torch.optim.AdamW(param_groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ``cfg.warmup_steps`` then cosine decay to 0 at ``total_steps``."""
    warmup = max(0, cfg.warmup_steps)
    total = max(total_steps, warmup + 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
