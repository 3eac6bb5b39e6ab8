"""Global alignment: per-expert embeddings mixed by text-predicted weights.

Video: each expert's fused tokens are pooled over time (masked max + mean) and passed through a
gated embedding unit (Miech et al. MoEE; collaborative experts). Text: the pooled sentence feature
goes through one gated embedding unit per expert, and a linear map predicts the mixture logits
(plus ``log(prior_e)``). For a pair, the weights are the softmax over the experts AVAILABLE for the
video (renormalised when one is missing) and ``s_global = sum_e w_e cos(t_e, v_e)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from etva.model.netvlad import safe_l2_normalize

__all__ = ["masked_mean_max_pool", "GatedEmbeddingUnit", "GlobalAlignment", "mixture_weights"]


def masked_mean_max_pool(x: Tensor, mask: Tensor) -> Tensor:
    """x (B, N, d), mask (B, N) bool -> (B, 2d) [mean, max] over real tokens; zeros if none."""
    m = mask.unsqueeze(-1)  # (B, N, 1)
    mean = (x * m).sum(1) / m.sum(1).clamp_min(1)  # (B, d)
    mx = x.masked_fill(~m, float("-inf")).amax(1)  # (B, d)
    mx = torch.where(mask.any(1, keepdim=True), mx, torch.zeros_like(mx))
    return torch.cat([mean, mx], dim=-1)


class GatedEmbeddingUnit(nn.Module):
    """``y = W x``; ``y = y * sigmoid(G y)`` (context gating); L2-normalised."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim)
        self.gate = nn.Linear(out_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        y = self.fc(x)
        return safe_l2_normalize(y * torch.sigmoid(self.gate(y)), dim=-1)


def _pattern_weights(logits: Tensor, available: Tensor) -> tuple[Tensor, Tensor]:
    """Softmax of the text logits over each availability pattern, masked in logit space.

    Args: logits (Bt, E), available (Bv, E) bool.
    Returns: ``(w (Bt, P, E), pattern_of (Bv,))`` for the P distinct patterns of the videos. Unavailable
    experts get ``-inf`` before the softmax (exactly 0 weight, no underflow of the others whatever the
    logit gap); a pattern with no available expert gets all-zero weights (and finite gradients).
    """
    patterns, pattern_of = torch.unique(available.bool(), dim=0, return_inverse=True)  # (P, E), (Bv,)
    any_avail = patterns.any(-1)  # (P,)
    keep = patterns | ~any_avail[:, None]  # all-unavailable rows keep finite logits, zeroed below
    masked = logits[:, None, :].masked_fill(~keep[None], float("-inf"))  # (Bt, P, E)
    w = torch.softmax(masked, dim=-1) * any_avail[None, :, None].to(logits.dtype)
    return w, pattern_of


def mixture_weights(logits: Tensor, available: Tensor) -> Tensor:
    """Per-pair weights: softmax of text logits over the video's available experts.

    Args: logits (Bt, E), available (Bv, E) bool. Returns (Bt, Bv, E), rows sum to 1
    (0 everywhere for a video with no available expert). For inspection/tests; the score itself
    is computed without this 3-D tensor.
    """
    w, pattern_of = _pattern_weights(logits, available)
    return w[:, pattern_of]  # (Bt, Bv, E)


class GlobalAlignment(nn.Module):
    """Holds the video and text gated embedding units, one per expert, and the mixture head."""

    def __init__(self, experts: list[str], priors: list[float], text_dim: int, d: int) -> None:
        super().__init__()
        if any(p <= 0 for p in priors):
            raise ValueError(f"model.experts.*.prior must be > 0, got {dict(zip(experts, priors))}")
        self.experts = list(experts)
        self.video_units = nn.ModuleList(GatedEmbeddingUnit(2 * d, d) for _ in experts)
        self.text_units = nn.ModuleList(GatedEmbeddingUnit(text_dim, d) for _ in experts)
        self.mixture = nn.Linear(text_dim, len(experts))
        self.register_buffer("log_prior", torch.tensor([math.log(p) for p in priors]))

    def encode_text(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        """pooled (B, H) -> (embeddings (B, E, d), mixture logits (B, E))."""
        emb = torch.stack([u(pooled) for u in self.text_units], dim=1)  # (B, E, d)
        return emb, self.mixture(pooled) + self.log_prior

    def encode_video(self, tokens: list[Tensor], masks: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Per-expert tokens (B, N_e, d) + masks (B, N_e) -> (embeddings (B, E, d), avail (B, E))."""
        embs = [u(masked_mean_max_pool(x, m)) for u, x, m in zip(self.video_units, tokens, masks)]
        avail = torch.stack([m.any(dim=1) for m in masks], dim=1)  # (B, E)
        return torch.stack(embs, dim=1), avail

    @staticmethod
    def similarity(text: Tensor, logits: Tensor, video: Tensor, available: Tensor) -> Tensor:
        """text (Bt, E, d), logits (Bt, E), video (Bv, E, d), available (Bv, E) -> (Bt, Bv).

        One (Bt, Bv) matmul per expert; never materialises (Bt, Bv, E, d). The mixture is masked in
        logit space per availability pattern (same values as ``etva.eval.similarity.FusedScorer``).
        """
        w, pattern_of = _pattern_weights(logits, available)  # (Bt, P, E), (Bv,)
        out = text.new_zeros((text.shape[0], video.shape[0]))
        for e in range(text.shape[1]):
            cos = text[:, e] @ video[:, e].t()  # (Bt, Bv), unit vectors
            out = out + w[:, pattern_of, e] * cos
        return out
