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
from etva.distributed import gather_variable, get_world_size
from etva.eval.binding import GroupTable
from etva.eval.scoring import EncodedStream, score_streams
from etva.model.etva import ETVA, TextEmbedding, VideoEmbedding
from etva.model.text import TextEncoder
from etva.train.precision import autocast, float32_fields

__all__ = [
    "move_batch",
    "gather_embedding",
    "train_step",
    "train_epoch",
    "evaluate",
    "EncodedStream",
    "score_streams",
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


def train_step(model: nn.Module, loss_fn: nn.Module, batch: dict[str, Tensor], precision: str = "fp32"):
    """Forward + global-batch loss (no backward). Returns ``(total, parts)``.

    The encoders run under autocast for ``bf16``/``fp16``; their embeddings are cast to float32 before
    the gather, the similarity and the loss, which therefore stay in fp32.
    """
    core = _unwrap(model)
    with autocast(batch["input_ids"].device, precision):
        text, video = model(batch)  # through DDP's forward
    text, video = float32_fields(text), float32_fields(video)
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


def _optimizer_step(total: Tensor, optimizer, scheduler, params: list, grad_clip: float, scaler) -> None:
    """Backward, clip, step (through the GradScaler when given), then advance the schedule."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        total.backward()
        if grad_clip and grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
    else:
        scaler.scale(total).backward()
        if grad_clip and grad_clip > 0:
            scaler.unscale_(optimizer)  # clip the true gradients
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        scaler.step(optimizer)  # skipped when the scaled gradients overflowed
        scaler.update()
    if scheduler is not None:
        scheduler.step()


class _Progress:
    """Running sums of one epoch: loss parts, steps, clips, data-wait and step time."""

    def __init__(self, start_step: int) -> None:
        self.start_step, self.sums = start_step, {}
        self.steps = self.clips = 0
        self.wait_s = self.step_s = 0.0

    def add(self, total: Tensor, parts: dict, clips: int, waited: float, step_s: float) -> None:
        self.steps, self.clips = self.steps + 1, self.clips + clips
        self.wait_s, self.step_s = self.wait_s + waited, self.step_s + step_s
        for k, v in {"loss": total.detach(), **parts}.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)

    def averages(self, optimizer, loss_fn: nn.Module) -> dict[str, float]:
        """Mean loss parts so far, current lr and temperature, data-stall share, global step."""
        out = {k: v / max(self.steps, 1) for k, v in self.sums.items()}
        busy = self.wait_s + self.step_s
        out.update(
            step=self.start_step + self.steps,
            epoch_step=self.steps,
            lr=optimizer.param_groups[0]["lr"],
            data_stall_share=self.wait_s / busy if busy > 0 else 0.0,
        )
        if isinstance(getattr(loss_fn, "temperature", None), Tensor):
            out["temperature"] = float(loss_fn.temperature.detach())
        return out


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
    precision: str = "fp32",
    scaler: torch.amp.GradScaler | None = None,
    start_step: int | None = None,
) -> dict[str, float]:
    """One pass over ``batches``. Returns averaged loss parts and throughput/data-stall figures.

    ``report`` (if given) receives, every ``log_every`` steps: the running mean of ``loss`` and its
    parts, the current ``lr`` and ``temperature``, ``data_stall_share`` so far, ``epoch``, the global
    ``step`` (``start_step`` + steps of this epoch; ``start_step`` defaults to the scheduler's step
    count, which a resumed scheduler restores) and ``epoch_step``. ``precision`` ``fp16`` needs
    ``scaler`` (:func:`etva.train.precision.make_grad_scaler`).
    """
    if precision == "fp16" and scaler is None:
        raise ValueError("train_epoch: precision 'fp16' needs a GradScaler (etva.train.precision.make_grad_scaler)")
    model.train()
    loss_fn.train()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if start_step is None:
        start_step = int(getattr(scheduler, "last_epoch", 0)) if scheduler is not None else 0
    prog = _Progress(start_step)
    t_epoch = time.perf_counter()
    for batch, waited in _timed(batches):
        t0 = time.perf_counter()
        batch = move_batch(batch, device)
        total, parts = train_step(model, loss_fn, batch, precision)
        _optimizer_step(total, optimizer, scheduler, params, grad_clip, scaler)
        prog.add(total, parts, int(batch["input_ids"].shape[0]), waited, time.perf_counter() - t0)
        if log_every and prog.steps % log_every == 0:
            running = {**prog.averages(optimizer, loss_fn), "epoch": epoch}
            log.info("epoch %d step %d loss %.4f", epoch, running["step"], running["loss"])
            if report is not None:
                report(running)
    elapsed = time.perf_counter() - t_epoch
    if prog.steps == 0:
        log.warning("train_epoch %d: no batches", epoch)
    out = prog.averages(optimizer, loss_fn)
    out.update(
        steps=prog.steps,
        clips=prog.clips,
        clips_per_s=prog.clips / elapsed if elapsed > 0 else 0.0,
        global_clips_per_s=prog.clips * get_world_size() / elapsed if elapsed > 0 else 0.0,
        step_time_s=prog.step_s / max(prog.steps, 1),
        data_wait_s=prog.wait_s,
        epoch_time_s=elapsed,
    )
    return out


@torch.no_grad()
def _encode_streams(core: ETVA, video_batches, caption_batches, device, precision: str):
    videos, captions = EncodedStream(cols=[[]]), EncodedStream(cols=[[], []])
    with autocast(device, precision):
        for batch in video_batches:
            b = move_batch(batch, device)
            videos.parts.append(float32_fields(core.encode_video(b)))
            videos.cols[0].append(b["video_index"].long().cpu())
        for batch in caption_batches:
            b = move_batch(batch, device)
            captions.parts.append(float32_fields(core.encode_text(b["input_ids"], b["attention_mask"])))
            captions.cols[0].append(b["caption_index"].long().cpu())
            captions.cols[1].append(b["video_index"].long().cpu())
    return videos, captions


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
    precision: str = "fp32",
    reweight: str = "none",
    reweight_scale: float = 30.0,
    per_query: dict | None = None,
    groups: GroupTable | None = None,
) -> dict[str, float]:
    """Encode every video and caption once, gather them to rank 0, score all pairs, compute metrics.

    Encoding runs under autocast for ``bf16``/``fp16``; embeddings are cast to float32, so scores and
    metrics are computed in fp32. Videos are deduplicated by ``video_index`` (a padding sampler may
    repeat some) and ordered by it; captions likewise by ``caption_index``; a caption's ground truth is
    its ``video_index``. Returns the ``etva.eval.metrics.retrieval_metrics`` keys (t2v_R1 ... v2t_MnR) plus
    ``num_videos`` and ``num_queries``; every rank returns rank 0's numbers. ``reweight``/``per_query``:
    the test-time re-weighted row and the per-caption rank counts (``etva.eval.scoring.score_streams``).
    ``groups``: the split's :class:`etva.eval.binding.GroupTable` (one row per ``video_index``, e.g.
    ``etva.data.synth.groups.read_group_table``) adds ``group_R1``, ``group_R1_chance``, ``pair_acc`` and
    ``pair_acc_<kind>``.
    """
    core = _unwrap(model)
    was_training = core.training
    core.eval()
    try:
        videos, captions = _encode_streams(core, video_batches, caption_batches, device, precision)
    finally:
        core.train(was_training)
    return score_streams(
        core, videos, captions, device,
        query_chunk=query_chunk, video_chunk=video_chunk, ties=ties, score_key=score_key,
        reweight=reweight, reweight_scale=reweight_scale, per_query=per_query, groups=groups,
    )  # fmt: skip


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
