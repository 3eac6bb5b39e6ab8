"""Everything a training run holds, built in one place: :func:`build_training` (fresh or resumed).

Resume order matters on accelerators: the model and the loss module are moved to the device BEFORE
the optimizer exists, so the optimizer is built over the device parameters and
``Optimizer.load_state_dict`` casts the saved state (loaded on the CPU) to each parameter's device.
(Loading the state first and moving the model afterwards leaves Adam's moments on the CPU, and the
first step after a resume fails on a GPU.)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from etva.config import Config
from etva.model import build_model
from etva.model.etva import ETVA
from etva.train.engine import build_optimizer, build_scheduler
from etva.train.losses import ETVALoss, build_loss
from etva.train.precision import allow_tf32, make_grad_scaler

__all__ = ["TrainingState", "build_training"]

log = logging.getLogger(__name__)


@dataclass
class TrainingState:
    """Model, loss, optimizer, schedule (and fp16 scaler) on ``device``, plus where training resumes."""

    model: ETVA
    loss_fn: ETVALoss
    optimizer: torch.optim.AdamW
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None
    device: torch.device
    precision: str
    start_epoch: int = 0
    history: dict[str, dict] = field(default_factory=dict)

    def model_state(self) -> dict[str, dict]:
        """``{"model", "loss"}`` state dicts: the ``model_state`` of ``etva.train.checkpoint.save_checkpoint``."""
        return {"model": self.model.state_dict(), "loss": self.loss_fn.state_dict()}

    def optimizer_state(self) -> dict[str, Any]:
        """``{"optimizer", "scheduler", "scaler"}``: the ``optimizer_state`` of ``save_checkpoint``
        (``scaler`` is None unless fp16)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
        }


def build_training(
    cfg: Config,
    vocab_size: int,
    total_steps: int,
    device: torch.device | str,
    state: dict[str, Any] | None = None,
) -> TrainingState:
    """Build model, loss, optimizer, schedule and (fp16) grad scaler on ``device``; resume from ``state``.

    Args:
        cfg: the run's config (``model``, ``loss``, ``optim``, ``train.seed``, ``train.precision``).
        vocab_size: the tokenizer's vocabulary size.
        total_steps: optimizer steps of the whole run (the cosine schedule's length).
        device: where the model, the loss module and hence the optimizer state live.
        state: a checkpoint as returned by :func:`etva.train.checkpoint.load_checkpoint` (``model.model``,
            ``model.loss``, ``optimizer.optimizer``, ``optimizer.scheduler``, optional
            ``optimizer.scaler``, ``meta.epoch``, ``meta.history``), or None for a fresh run.
    Returns:
        A :class:`TrainingState`; ``start_epoch`` is ``meta.epoch + 1`` when resumed, else 0.
    """
    device = torch.device(device)
    torch.manual_seed(cfg.train.seed)  # every rank builds the same initial weights
    allow_tf32(device)
    model = build_model(cfg.model, vocab_size=vocab_size)
    loss_fn = build_loss(cfg.loss)
    if state is not None:
        model.load_state_dict(state["model"]["model"])
        loss_fn.load_state_dict(state["model"]["loss"])
    model.to(device)  # before the optimizer exists: its state then follows each parameter's device
    loss_fn.to(device)
    optimizer = build_optimizer(nn.ModuleList([model, loss_fn]), cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, total_steps)
    scaler = make_grad_scaler(device, cfg.train.precision)
    out = TrainingState(model, loss_fn, optimizer, scheduler, scaler, device, cfg.train.precision)
    if state is not None:
        _resume(out, state)
    return out


def start_epoch(state: dict[str, Any] | None) -> int:
    """The epoch a run resumed from ``state`` (a loaded checkpoint, or None) starts at."""
    return int(state["meta"]["epoch"]) + 1 if state is not None else 0


def _resume(ts: TrainingState, state: dict[str, Any]) -> None:
    """Load optimizer/schedule/scaler state (the parameters are already on the device) and the meta."""
    saved = state.get("optimizer")
    if not saved or "optimizer" not in saved or "scheduler" not in saved:
        raise ValueError(
            "build_training: the checkpoint has no optimizer/scheduler state (optimizer.pt missing, "
            "or loaded with load_optimizer=False); cannot resume training from it"
        )
    ts.optimizer.load_state_dict(saved["optimizer"])  # cast to each parameter's device and dtype
    ts.scheduler.load_state_dict(saved["scheduler"])
    if ts.scaler is not None and saved.get("scaler"):
        ts.scaler.load_state_dict(saved["scaler"])
    meta = state["meta"]
    ts.start_epoch = start_epoch(state)
    ts.history = dict(meta.get("history", {}))
    log.info("resumed at epoch %d (global step %d)", ts.start_epoch, ts.scheduler.last_epoch)
