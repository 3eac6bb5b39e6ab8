"""Text encoder: ALBERT token features, a boolean mask and a pooled sentence feature.

Presets (``TextConfig.preset``):

- ``tiny``: an ``AlbertConfig`` built from the TextConfig fields (random init; tests, default job);
- ``albert-base-v2``: pretrained weights from ``TextConfig.pretrained_path`` (a local directory with
  ``config.json`` + weights) or, when that is empty, from the local Hugging Face cache. Nothing is
  ever downloaded.

The pooled feature is the masked mean of the token features (it does not rely on the tokenizer
adding a ``[CLS]`` token, and it uses no extra pooler parameters that DDP would see as unused).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn

from etva.config import TextConfig

__all__ = ["TextFeatures", "TextEncoder", "build_text_encoder", "TEXT_PRESETS"]

log = logging.getLogger(__name__)


@dataclass
class TextFeatures:
    tokens: Tensor  # (B, L, H)
    mask: Tensor  # (B, L) bool
    pooled: Tensor  # (B, H)


class TextEncoder(nn.Module):
    """Wraps an ``AlbertModel`` (built without its pooler)."""

    def __init__(self, albert: nn.Module, hidden_size: int, freeze: bool = False) -> None:
        super().__init__()
        self.albert = albert
        self.hidden_size = hidden_size
        if freeze:
            for p in self.albert.parameters():
                p.requires_grad_(False)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> TextFeatures:
        """input_ids (B, L) int64, attention_mask (B, L) -> TextFeatures."""
        out = self.albert(input_ids=input_ids, attention_mask=attention_mask)
        tokens = out.last_hidden_state  # (B, L, H)
        mask = attention_mask.bool()  # (B, L)
        m = mask.unsqueeze(-1).to(tokens.dtype)  # (B, L, 1)
        pooled = (tokens * m).sum(1) / m.sum(1).clamp_min(1.0)  # (B, H)
        return TextFeatures(tokens=tokens, mask=mask, pooled=pooled)


def _build_tiny(cfg: TextConfig, vocab_size: int) -> TextEncoder:
    from transformers import AlbertConfig, AlbertModel  # lazy: the import costs seconds

    if vocab_size < 2:
        raise ValueError(f"text encoder: vocab_size must be >= 2, got {vocab_size}")
    acfg = AlbertConfig(
        vocab_size=vocab_size,
        embedding_size=cfg.embedding_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=0,
    )
    albert = AlbertModel(acfg, add_pooling_layer=False)
    return TextEncoder(albert, cfg.hidden_size, cfg.freeze)


_HOW_TO_PROVIDE = (
    "download albert-base-v2 on a machine with network access (e.g. "
    "`huggingface-cli download albert/albert-base-v2 --local-dir <dir>`), copy the directory here "
    "and set model.text.pretrained_path=<dir> (or use model.text.preset=tiny)"
)


def _build_pretrained(cfg: TextConfig, vocab_size: int) -> TextEncoder:
    from transformers import AlbertModel  # lazy: the import costs seconds

    source = cfg.pretrained_path or "albert-base-v2"
    if cfg.pretrained_path and not (Path(cfg.pretrained_path) / "config.json").is_file():
        raise FileNotFoundError(
            f"model.text.pretrained_path={cfg.pretrained_path!r}: no config.json there; " + _HOW_TO_PROVIDE
        )
    try:
        albert = AlbertModel.from_pretrained(source, local_files_only=True, add_pooling_layer=False)
    except OSError as e:
        raise FileNotFoundError(
            f"model.text.preset=albert-base-v2: weights not found locally ({source!r}); " + _HOW_TO_PROVIDE
        ) from e
    if vocab_size > albert.config.vocab_size:
        raise ValueError(
            f"tokenizer vocab_size {vocab_size} exceeds the pretrained model's "
            f"{albert.config.vocab_size}: use the model's own tokenizer (data.tokenizer_path)"
        )
    log.info("loaded pretrained ALBERT from %s", source)
    return TextEncoder(albert, albert.config.hidden_size, cfg.freeze)


TEXT_PRESETS: dict[str, Callable[[TextConfig, int], TextEncoder]] = {
    "tiny": _build_tiny,
    "albert-base-v2": _build_pretrained,
}


def build_text_encoder(cfg: TextConfig, vocab_size: int) -> TextEncoder:
    """Build the text encoder of ``cfg.preset`` for a tokenizer of ``vocab_size`` ids."""
    if cfg.preset not in TEXT_PRESETS:
        raise ValueError(f"model.text.preset: unknown '{cfg.preset}', expected one of {sorted(TEXT_PRESETS)}")
    return TEXT_PRESETS[cfg.preset](cfg, vocab_size)
