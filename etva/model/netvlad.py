"""Fine-grained alignment: NetVLAD residual descriptors with shared (or separate) cluster centres.

Text tokens and video tokens are projected into the same ``d``-dim space, soft-assigned to ``K``
clusters (+ ``G`` ghost clusters that absorb uninformative tokens and are then dropped), and
summarised as per-cluster residual sums, each L2-normalised. The local score of a text/video pair
is the mean over clusters of the inner products of their descriptors:
``s_local = (1/K) sum_k <t_k, v_k>``.

Modes (``ModelConfig.vlad_mode``):

- ``shared``: one parameter set (assignment + centres) used by both sides (the ETVA default);
- ``separate``: one parameter set per modality;
- ``text``: NetVLAD on the text side only. The video side is pooled into the same ``(K, d)`` shape by
  a learned per-cluster attention pooling: cluster ``k`` has a query ``q_k``; the video descriptor is
  ``v_k = normalize(sum_n softmax_n(<q_k, x_n>/sqrt(d)) x_n)`` over the real (unmasked) tokens.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = [
    "netvlad",
    "soft_assignments",
    "safe_l2_normalize",
    "NetVLAD",
    "AttentionSlots",
    "LocalAlignment",
]

VLAD_MODES = ("shared", "separate", "text")


def safe_l2_normalize(x: Tensor, dim: int = -1, eps: float = 1e-6) -> Tensor:
    """``x / ||x||`` along ``dim``; a zero vector stays zero and its gradient stays finite."""
    sq = (x * x).sum(dim=dim, keepdim=True)
    norm = sq.clamp_min(eps * eps).sqrt()  # clamp before sqrt: no inf grad at 0
    return x / norm


def netvlad(x: Tensor, mask: Tensor, assign_weight: Tensor, assign_bias: Tensor, centers: Tensor) -> Tensor:
    """Masked NetVLAD with ghost clusters and intra-normalisation.

    Args:
        x: (B, N, D) token features.
        mask: (B, N) bool, True = real token; masked tokens get assignment weight 0.
        assign_weight: (K+G, D) soft-assignment weights (G ghost clusters last).
        assign_bias: (K+G,) soft-assignment bias.
        centers: (K, D) cluster centres.
    Returns:
        (B, K, D): ``v_k = sum_n a_nk (x_n - c_k)``, each ``v_k`` L2-normalised (zero stays zero).
    """
    k = centers.shape[0]
    if assign_weight.shape[0] < k or assign_weight.shape[1] != x.shape[-1]:
        raise ValueError(
            f"netvlad: assign_weight {tuple(assign_weight.shape)} does not fit K={k}, D={x.shape[-1]}"
        )
    logits = x @ assign_weight.t() + assign_bias  # (B, N, K+G)
    a = logits.softmax(dim=-1)[..., :k]  # (B, N, K)
    a = a * mask.unsqueeze(-1).to(a.dtype)  # (B, N, K)
    v = torch.einsum("bnk,bnd->bkd", a, x)  # (B, K, D)
    v = v - a.sum(dim=1).unsqueeze(-1) * centers.unsqueeze(0)  # (B, K, D)
    return safe_l2_normalize(v, dim=-1)


def soft_assignments(x: Tensor, mask: Tensor, assign_weight: Tensor, assign_bias: Tensor, k: int) -> Tensor:
    """The soft-assignment weights :func:`netvlad` uses, for inspection (e.g. word -> cluster plots).

    Args: x (B, N, D), mask (B, N) bool, assign_weight (K+G, D), assign_bias (K+G,), k = K.
    Returns: (B, N, K) softmax over the K+G clusters, ghost columns dropped (a row sums to <= 1),
    zero rows for masked tokens.
    """
    logits = x @ assign_weight.t() + assign_bias  # (B, N, K+G)
    return logits.softmax(dim=-1)[..., :k] * mask.unsqueeze(-1).to(x.dtype)  # (B, N, K)


class NetVLAD(nn.Module):
    """Parameters of one NetVLAD layer: ``K`` clusters plus ``G`` ghost clusters over ``dim``."""

    def __init__(self, dim: int, num_clusters: int, ghost_clusters: int = 0) -> None:
        super().__init__()
        if num_clusters < 1 or ghost_clusters < 0:
            raise ValueError(
                f"model.num_clusters must be >= 1 and model.ghost_clusters >= 0, got "
                f"{num_clusters}, {ghost_clusters}"
            )
        scale = 1.0 / math.sqrt(dim)
        self.num_clusters = num_clusters
        self.assign_weight = nn.Parameter(torch.randn(num_clusters + ghost_clusters, dim) * scale)
        self.assign_bias = nn.Parameter(torch.zeros(num_clusters + ghost_clusters))
        self.centers = nn.Parameter(torch.randn(num_clusters, dim) * scale)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x (B, N, D), mask (B, N) bool -> (B, K, D)."""
        return netvlad(x, mask, self.assign_weight, self.assign_bias, self.centers)

    def assignments(self, x: Tensor, mask: Tensor) -> Tensor:
        """x (B, N, D), mask (B, N) bool -> (B, N, K) soft-assignment weights (ghosts dropped)."""
        return soft_assignments(x, mask, self.assign_weight, self.assign_bias, self.num_clusters)


class AttentionSlots(nn.Module):
    """Video side of the ``text`` mode: one learned query per cluster, masked attention pooling."""

    def __init__(self, dim: int, num_clusters: int) -> None:
        super().__init__()
        self.num_clusters = num_clusters
        self.queries = nn.Parameter(torch.randn(num_clusters, dim) / math.sqrt(dim))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x (B, N, D), mask (B, N) bool -> (B, K, D) L2-normalised (zero rows when all masked)."""
        scores = torch.einsum("kd,bnd->bkn", self.queries, x) / math.sqrt(x.shape[-1])  # (B, K, N)
        scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
        any_real = mask.any(dim=1)[:, None, None]  # (B, 1, 1)
        attn = torch.where(any_real, scores, torch.zeros_like(scores)).softmax(dim=-1)
        attn = attn * any_real.to(attn.dtype)  # (B, K, N): all-masked clips -> zeros
        return safe_l2_normalize(torch.einsum("bkn,bnd->bkd", attn, x), dim=-1)


class LocalAlignment(nn.Module):
    """Projects both sides to ``d`` and computes per-cluster descriptors for the chosen mode."""

    def __init__(
        self,
        text_dim: int,
        video_dim: int,
        d: int,
        num_clusters: int,
        ghost_clusters: int,
        mode: str = "shared",
    ) -> None:
        super().__init__()
        if mode not in VLAD_MODES:
            raise ValueError(f"model.vlad_mode: unknown '{mode}', expected one of {VLAD_MODES}")
        self.mode = mode
        self.num_clusters = num_clusters
        self.text_proj = nn.Linear(text_dim, d)
        self.video_proj = nn.Linear(video_dim, d)
        self.text_vlad = NetVLAD(d, num_clusters, ghost_clusters)
        if mode == "shared":
            self.video_vlad: nn.Module = self.text_vlad  # the very same parameters
        elif mode == "separate":
            self.video_vlad = NetVLAD(d, num_clusters, ghost_clusters)
        else:
            self.video_vlad = AttentionSlots(d, num_clusters)

    def encode_text(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """tokens (B, L, H), mask (B, L) bool -> (B, K, d)."""
        return self.text_vlad(self.text_proj(tokens), mask)

    def text_assignments(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """tokens (B, L, H), mask (B, L) bool -> (B, L, K) word -> cluster weights."""
        return self.text_vlad.assignments(self.text_proj(tokens), mask)

    def encode_video(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """tokens (B, N, D_v), mask (B, N) bool -> (B, K, d)."""
        return self.video_vlad(self.video_proj(tokens), mask)

    @staticmethod
    def similarity(text: Tensor, video: Tensor) -> Tensor:
        """text (Bt, K, d), video (Bv, K, d) -> (Bt, Bv) ``(1/K) sum_k <t_k, v_k>`` by one matmul."""
        k = text.shape[1]
        return text.flatten(1) @ video.flatten(1).t() / k  # (Bt, Bv)
