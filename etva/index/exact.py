"""The ETVA score as an inner product, exactly, within one expert-availability pattern.

For a text ``q`` and a video ``v`` (docs/serving.md has the algebra):

``s(q, v) = a * sum_e w_e(q, p_v) <t_qe, v_ve> + b * (1/K) sum_k <t_qk, v_vk>``

where ``w(q, p) = softmax`` of the text's mixture logits over the experts of the video's availability
pattern ``p_v`` (0 for the others; all 0 when the video has no expert), ``(a, b) = (alpha, 1 - alpha)``
for ``alignment=both`` and ``(1, -)`` / ``(-, 1)`` for the one-branch ablations. The weights depend on
the query and the pattern only, so with

``video(v)  = [v_ve * avail_ve (e = 1..E) ; v_vk (k = 1..K)]``                      (E + K) * d
``query_p(q) = [a * w_e(q, p) * t_qe (e = 1..E) ; (b / K) * t_qk (k = 1..K)]``       (E + K) * d

the score is ``<query_p(q), video(v)>`` for every video of pattern ``p``. An index therefore keeps one
vector per video plus its pattern, searches each pattern's videos with that pattern's query vector and
merges the top-k of the parts. :class:`etva.eval.similarity.FusedScorer` (evaluation) uses the same two
functions.

Library code: PyTorch only.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["branch_weights", "video_vectors", "query_vectors", "pattern_key", "pattern_from_key"]


def branch_weights(has_global: bool, has_local: bool, alpha: float) -> tuple[float, float]:
    """``(a, b)``: the weights of the global and the local score in the retrieval score."""
    if not (has_global or has_local):
        raise ValueError("neither global nor local embeddings given")
    return (float(alpha) if has_local else 1.0), ((1.0 - float(alpha)) if has_global else 1.0)


def video_vectors(
    experts: Tensor | None, available: Tensor | None, local: Tensor | None
) -> tuple[Tensor, Tensor]:
    """The video side: experts (V, E, d), available (V, E) bool, local (V, K, d) (either branch may be None).

    Returns:
        (vectors (V, (E + K) * d) float32, patterns (V, E) bool; (V, 0) without the global branch).
    """
    parts, patterns = [], None
    if experts is not None:
        patterns = available.bool()
        parts.append((experts.float() * patterns[..., None]).flatten(1))  # (V, E*d)
    if local is not None:
        parts.append(local.float().flatten(1))  # (V, K*d)
        if patterns is None:
            patterns = torch.zeros(local.shape[0], 0, dtype=torch.bool)
    if not parts:
        raise ValueError("video_vectors: neither global nor local embeddings given")
    return torch.cat(parts, dim=1), patterns


def query_vectors(
    experts: Tensor | None, logits: Tensor | None, local: Tensor | None, pattern: Tensor, alpha: float
) -> Tensor:
    """The text side for one availability pattern.

    Args:
        experts: (Q, E, d) per-expert text embeddings (None without the global branch).
        logits: (Q, E) mixture logits (including the log prior).
        local: (Q, K, d) cluster descriptors (None without the local branch).
        pattern: (E,) bool, the experts the videos of this pattern have.
        alpha: the model's fusion weight of the global score.
    Returns:
        (Q, (E + K) * d) float32.
    """
    w_global, w_local = branch_weights(experts is not None, local is not None, alpha)
    parts = []
    if experts is not None:
        pattern = pattern.to(logits.device)
        masked = logits.float().masked_fill(~pattern, float("-inf"))  # (Q, E)
        w = torch.softmax(masked, dim=-1) if pattern.any() else torch.zeros_like(masked)
        parts.append((w_global * w[..., None] * experts.float()).flatten(1))  # (Q, E*d)
    if local is not None:
        parts.append((local.float() * (w_local / local.shape[1])).flatten(1))  # (Q, K*d)
    return torch.cat(parts, dim=1)


def pattern_key(pattern: Tensor) -> str:
    """A pattern (E,) bool as a string of 0/1 in expert order ('' without the global branch)."""
    return "".join("1" if b else "0" for b in pattern.tolist())


def pattern_from_key(key: str) -> Tensor:
    """The inverse of :func:`pattern_key`."""
    if any(c not in "01" for c in key):
        raise ValueError(f"availability pattern '{key}': expected a string of 0 and 1")
    return torch.tensor([c == "1" for c in key], dtype=torch.bool)
