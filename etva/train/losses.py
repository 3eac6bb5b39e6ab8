"""Retrieval losses: pure functions of (text x video) similarity matrices.

Every similarity matrix here is square ``(B, B)`` with row ``i`` a text query and column ``j`` a
video; the ground truth is the diagonal. Under DDP the matrix is built from embeddings gathered
across ranks (see :mod:`etva.distributed`), so ``B`` is the global batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from etva.config import LossConfig

__all__ = ["infonce_loss", "max_margin_loss", "ETVALoss", "build_loss", "LOSS_KINDS"]

_MIN_TEMPERATURE = 1e-3
_MAX_TEMPERATURE = 1.0


def _check_square(sim: Tensor, name: str) -> None:
    if sim.dim() != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"{name}: expected a square (B, B) similarity matrix, got {tuple(sim.shape)}")


def infonce_loss(sim: Tensor, temperature: Tensor | float) -> Tensor:
    """Bidirectional InfoNCE: mean of the text->video and video->text cross-entropies.

    Args:
        sim: (B, B) similarities, row = text, column = video, positives on the diagonal.
        temperature: scalar (float or 0-dim tensor); logits are ``sim / temperature``.
    Returns:
        0-dim loss tensor.
    """
    _check_square(sim, "infonce_loss")
    logits = sim / temperature  # (B, B)
    target = torch.arange(sim.shape[0], device=sim.device)
    t2v = F.cross_entropy(logits, target)
    v2t = F.cross_entropy(logits.t(), target)
    return 0.5 * (t2v + v2t)


def max_margin_loss(sim: Tensor, margin: float, hardest_negative: bool = True) -> Tensor:
    """Bidirectional hinge (triplet) loss on a (B, B) similarity matrix.

    For each positive ``s_ii`` and negative ``s_ij`` (j != i) in the row (text->video) and
    ``s_ji`` in the column (video->text) the cost is ``max(0, margin - s_ii + s_neg)``.
    ``hardest_negative=True`` keeps only the largest cost per query per direction (VSE++);
    otherwise costs are summed over all negatives. The result is averaged over queries and
    summed over the two directions.
    """
    _check_square(sim, "max_margin_loss")
    b = sim.shape[0]
    pos = sim.diagonal()  # (B,)
    cost_t2v = (margin - pos[:, None] + sim).clamp(min=0)  # (B, B) row i: text i vs video j
    cost_v2t = (margin - pos[None, :] + sim).clamp(min=0)  # (B, B) column j: video j vs text i
    eye = torch.eye(b, dtype=torch.bool, device=sim.device)
    cost_t2v = cost_t2v.masked_fill(eye, 0.0)
    cost_v2t = cost_v2t.masked_fill(eye, 0.0)
    if hardest_negative:
        return cost_t2v.max(dim=1).values.mean() + cost_v2t.max(dim=0).values.mean()
    return cost_t2v.sum(dim=1).mean() + cost_v2t.sum(dim=0).mean()


class ETVALoss(nn.Module):
    """Weighted sum of one loss kind over the ``global``, ``local`` and ``fused`` similarities.

    Holds the learnable temperature (``log`` parameterised, clamped to [1e-3, 1]) for InfoNCE.
    Similarities missing from the input dict (an alignment ablation that does not produce them)
    are skipped.
    """

    def __init__(self, cfg: LossConfig) -> None:
        super().__init__()
        if cfg.kind not in LOSS_KINDS:
            raise ValueError(f"loss.kind: unknown '{cfg.kind}', expected one of {sorted(LOSS_KINDS)}")
        if not (_MIN_TEMPERATURE <= cfg.temperature <= _MAX_TEMPERATURE):
            raise ValueError(
                f"loss.temperature: {cfg.temperature} outside [{_MIN_TEMPERATURE}, {_MAX_TEMPERATURE}]"
            )
        self.cfg = cfg
        log_t = torch.tensor(math.log(cfg.temperature))
        if cfg.learnable_temperature:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t)
        self.weights = {
            "global": cfg.lambda_global,
            "local": cfg.lambda_local,
            "fused": cfg.lambda_fused,
        }

    @property
    def temperature(self) -> Tensor:
        log_min, log_max = math.log(_MIN_TEMPERATURE), math.log(_MAX_TEMPERATURE)
        return self.log_temperature.clamp(log_min, log_max).exp()

    def _one(self, sim: Tensor) -> Tensor:
        if self.cfg.kind == "infonce":
            return infonce_loss(sim, self.temperature)
        return max_margin_loss(sim, self.cfg.margin, self.cfg.hardest_negative)

    def forward(self, sims: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Args: sims with any of the keys global/local/fused, each (B, B).

        Returns: ``(total, parts)``; parts holds each computed loss (detached) and the temperature.
        """
        total: Tensor | None = None
        parts: dict[str, Tensor] = {}
        for name, weight in self.weights.items():
            if name not in sims or weight == 0.0:
                continue
            loss = self._one(sims[name])
            parts[name] = loss.detach()
            total = weight * loss if total is None else total + weight * loss
        if total is None:
            raise ValueError(
                f"ETVALoss: no similarity to train on (got keys {sorted(sims)}, weights {self.weights})"
            )
        parts["temperature"] = self.temperature.detach()
        return total, parts


LOSS_KINDS = {"infonce", "margin"}


def build_loss(cfg: LossConfig) -> ETVALoss:
    """Build the training loss module from ``cfg.loss``."""
    return ETVALoss(cfg)
