"""Mixed precision: ``train.precision`` = ``fp32`` | ``bf16`` | ``fp16``.

The encoders run under :func:`torch.autocast` (device type taken from the device); the embeddings they
return are cast to float32 (:func:`float32_fields`) before any similarity, loss or score, so the
contrastive logits, the loss and the evaluation scores are always accumulated in fp32. ``fp16``
needs a :class:`torch.amp.GradScaler` (:func:`make_grad_scaler`); its state is saved and restored with
the optimizer's (see :mod:`etva.train.state`). On CUDA, :func:`allow_tf32` lets fp32 matmuls and
convolutions use TF32 tensor cores.
"""

from __future__ import annotations

import contextlib
from typing import Any, get_args

import torch
from torch import Tensor

from etva.config import Precision

__all__ = ["PRECISIONS", "autocast", "make_grad_scaler", "float32_fields", "allow_tf32", "device_type"]

PRECISIONS: tuple[str, ...] = get_args(Precision)
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _check(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"train.precision: unknown '{precision}', expected one of {PRECISIONS}")


def device_type(device: torch.device | str) -> str:
    """``"cuda"``, ``"cpu"``, ... of a device or device string (``"cuda:1"`` -> ``"cuda"``)."""
    return torch.device(device).type


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context for ``precision`` on ``device``; a no-op context for ``fp32``."""
    _check(precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type(device), dtype=_DTYPES[precision])


def make_grad_scaler(device: torch.device | str, precision: str) -> torch.amp.GradScaler | None:
    """A gradient scaler for ``fp16`` (small gradients would underflow); None otherwise."""
    _check(precision)
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device_type(device))


def float32_fields(emb: Any) -> Any:
    """A copy of an embedding dataclass with every floating field in float32 (bool fields unchanged)."""

    def one(t: Tensor) -> Tensor:
        return t.float() if t.is_floating_point() else t

    return emb.map(one)


def allow_tf32(device: torch.device | str) -> None:
    """On CUDA, let fp32 matmuls/convolutions use TF32 (process-wide torch flags); no-op elsewhere."""
    if device_type(device) == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
