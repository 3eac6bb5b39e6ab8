"""The ETVA model: separable text and video encoders and an all-pairs similarity.

``forward(batch)`` returns ``(TextEmbedding, VideoEmbedding)`` (call it through the DDP wrapper when
training so gradients are synchronised); ``similarity`` has no parameters, so it can run on
embeddings gathered across ranks, or on chunks of an evaluation split.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from etva.config import ModelConfig
from etva.model.alignment import GlobalAlignment
from etva.model.expert_base import Expert
from etva.model.experts import build_expert
from etva.model.fusion import VideoFusion
from etva.model.netvlad import LocalAlignment
from etva.model.text import TextEncoder, build_text_encoder

__all__ = ["TextEmbedding", "VideoEmbedding", "ETVA", "build_model", "ALIGNMENTS"]

ALIGNMENTS = ("global", "local", "both")


class _EmbeddingOps:
    """Shared helpers for the embedding dataclasses; fields are tensors or None."""

    def map(self, fn: Callable[[Tensor], Tensor]):
        """A copy with ``fn`` applied to every present tensor field."""
        vals = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return type(self)(**{k: None if v is None else fn(v) for k, v in vals.items()})

    def __len__(self) -> int:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is not None:
                return v.shape[0]
        return 0

    def __getitem__(self, idx):  # slice or index tensor along the batch dim
        return self.map(lambda t: t[idx])

    def to(self, device: torch.device | str):
        return self.map(lambda t: t.to(device))

    def detach(self):
        return self.map(lambda t: t.detach())

    @classmethod
    def cat(cls, items: list):
        """Concatenate embeddings along the batch dimension."""
        if not items:
            raise ValueError(f"{cls.__name__}.cat: nothing to concatenate")
        names = [f.name for f in dataclasses.fields(items[0])]
        out = {}
        for n in names:
            vals = [getattr(it, n) for it in items]
            out[n] = None if vals[0] is None else torch.cat(vals, dim=0)
        return cls(**out)


@dataclass
class TextEmbedding(_EmbeddingOps):
    experts: Tensor | None  # (B, E, d) per-expert unit vectors (None without global alignment)
    logits: Tensor | None  # (B, E) mixture logits incl. log prior
    local: Tensor | None  # (B, K, d) intra-normalised VLAD descriptors (None without local)


@dataclass
class VideoEmbedding(_EmbeddingOps):
    experts: Tensor | None  # (B, E, d)
    available: Tensor | None  # (B, E) bool
    local: Tensor | None  # (B, K, d)


class ETVA(nn.Module):
    def __init__(self, cfg: ModelConfig, text: TextEncoder, experts: dict[str, Expert]) -> None:
        super().__init__()
        if cfg.alignment not in ALIGNMENTS:
            raise ValueError(f"model.alignment: unknown '{cfg.alignment}', expected {ALIGNMENTS}")
        if not experts:
            raise ValueError("model.experts: no expert is enabled")
        if not 0.0 <= cfg.alpha <= 1.0:
            raise ValueError(f"model.alpha: expected a value in [0, 1], got {cfg.alpha}")
        d = cfg.d
        self.alignment, self.alpha = cfg.alignment, cfg.alpha
        self.expert_names = list(experts)
        self.text = text
        self.experts = nn.ModuleDict(experts)
        self.expert_proj = nn.ModuleDict({n: nn.Linear(e.out_dim, d) for n, e in experts.items()})
        self.expert_type = nn.Parameter(torch.randn(len(experts), d) * 0.02)  # (E, d)
        self.fusion = VideoFusion(d, cfg.fusion_layers, cfg.fusion_heads, cfg.dropout)
        self.global_align: GlobalAlignment | None = None
        self.local_align: LocalAlignment | None = None
        if cfg.alignment in ("global", "both"):
            priors = [cfg.experts[n].prior for n in self.expert_names]
            self.global_align = GlobalAlignment(self.expert_names, priors, text.hidden_size, d)
        if cfg.alignment in ("local", "both"):
            self.local_align = LocalAlignment(
                text.hidden_size, d, d, cfg.num_clusters, cfg.ghost_clusters, cfg.vlad_mode
            )

    @property
    def loss_keys(self) -> tuple[str, ...]:
        """The similarity keys the training loss uses (``fused`` is an alias in 1-branch modes)."""
        return {"global": ("global",), "local": ("local",), "both": ("global", "local", "fused")}[
            self.alignment
        ]

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> TextEmbedding:
        """input_ids (B, L), attention_mask (B, L) -> TextEmbedding."""
        feats = self.text(input_ids, attention_mask)
        experts = logits = local = None
        if self.global_align is not None:
            experts, logits = self.global_align.encode_text(feats.pooled)
        if self.local_align is not None:
            local = self.local_align.encode_text(feats.tokens, feats.mask)
        return TextEmbedding(experts=experts, logits=logits, local=local)

    def text_cluster_assignments(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """input_ids (B, L), attention_mask (B, L) -> (B, L, K) soft assignment of each text token to
        the (shared) NetVLAD clusters; padding rows are 0. Needs local alignment ("local"/"both")."""
        if self.local_align is None:
            raise ValueError(f"text_cluster_assignments: model.alignment='{self.alignment}' has no NetVLAD")
        feats = self.text(input_ids, attention_mask)
        return self.local_align.text_assignments(feats.tokens, feats.mask)

    def _fused_tokens(self, batch: dict[str, Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Run every expert, project, embed, fuse; return per-expert fused tokens and masks."""
        toks, masks = [], []
        for i, name in enumerate(self.expert_names):
            x, m = self.experts[name](batch)  # (B, N_e, D_e), (B, N_e)
            x = self.expert_proj[name](x)  # (B, N_e, d)
            x = x + self.expert_type[i] + self.fusion.positions(x.shape[1], x.shape[2], x.device)
            toks.append(x)
            masks.append(m.to(x.device))
        sizes = [t.shape[1] for t in toks]
        fused = self.fusion(torch.cat(toks, dim=1), torch.cat(masks, dim=1))  # (B, N, d)
        return list(torch.split(fused, sizes, dim=1)), masks

    def encode_video(self, batch: dict[str, Tensor]) -> VideoEmbedding:
        """Video keys of a batch (frames, audio_mel, audio_mask, feat/*) -> VideoEmbedding."""
        toks, masks = self._fused_tokens(batch)
        experts = available = local = None
        if self.global_align is not None:
            experts, available = self.global_align.encode_video(toks, masks)
        if self.local_align is not None:
            local = self.local_align.encode_video(torch.cat(toks, 1), torch.cat(masks, 1))
        return VideoEmbedding(experts=experts, available=available, local=local)

    def forward(self, batch: dict[str, Tensor]) -> tuple[TextEmbedding, VideoEmbedding]:
        """Encode the paired captions and clips of a training batch."""
        text = self.encode_text(batch["input_ids"], batch["attention_mask"])
        return text, self.encode_video(batch)

    def similarity(self, text: TextEmbedding, video: VideoEmbedding) -> dict[str, Tensor]:
        """All pairs: dict of (Bt, Bv) scores. ``fused`` is the retrieval score in every mode."""
        out: dict[str, Tensor] = {}
        if self.global_align is not None:
            out["global"] = GlobalAlignment.similarity(
                text.experts, text.logits, video.experts, video.available
            )
        if self.local_align is not None:
            out["local"] = LocalAlignment.similarity(text.local, video.local)
        if self.alignment == "both":
            out["fused"] = self.alpha * out["global"] + (1.0 - self.alpha) * out["local"]
        else:
            out["fused"] = out[self.alignment]
        return out


def build_model(cfg: ModelConfig, vocab_size: int) -> ETVA:
    """Build ETVA from ``cfg.model`` for a tokenizer with ``vocab_size`` ids (enabled experts only)."""
    text = build_text_encoder(cfg.text, vocab_size)
    experts = {n: build_expert(n, e) for n, e in cfg.experts.items() if e.enabled}
    return ETVA(cfg, text, experts)
