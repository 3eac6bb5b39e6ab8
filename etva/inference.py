"""Inference with a trained checkpoint: load it, encode texts, encode videos.

One implementation for every consumer (``etva search``, the MLflow pictures of ``ray_jobs.pictures``,
evaluation): :func:`load_trained` turns a checkpoint directory (``etva.train.checkpoint`` layout: model.pt,
meta.json, config.yaml, tokenizer/) into ``(model in eval mode, Config, tokenizer)``;
:func:`encode_texts` / :func:`encode_tokens` give a :class:`TextEmbedding`; :func:`encode_videos` turns
decoded examples (``make_video_example`` dicts) into a :class:`VideoEmbedding`,
:func:`encode_video_batches` does the same for already stacked batches (``decode_batch`` output), and
:func:`encode_records` decodes clip records too (clips that cannot be decoded are skipped and reported).

Inputs go to the model's device; the embeddings stay there (call ``.to("cpu")`` to keep them).
Library code: PyTorch only (no Ray, no MLflow).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from etva.config import Config, apply_overrides, config_from_dict
from etva.data.example import SKIPPABLE_ERRORS, make_video_example
from etva.data.records import ClipRecord
from etva.data.tokenizer import load_tokenizer, tokenize
from etva.model import ETVA, TextEmbedding, VideoEmbedding, build_model
from etva.train.checkpoint import CheckpointError, load_checkpoint

__all__ = [
    "TrainedState",
    "EncodedVideos",
    "read_trained",
    "build_trained_model",
    "load_trained",
    "encode_tokens",
    "encode_texts",
    "stack_examples",
    "encode_videos",
    "encode_video_batches",
    "decode_example",
    "encode_records",
]


@dataclass(frozen=True)
class TrainedState:
    """A verified checkpoint read into memory; the weights are not in a model yet."""

    root: Path
    cfg: Config  # the checkpoint's config.yaml (+ overrides)
    weights: dict[str, torch.Tensor]  # ETVA state_dict
    vocab_size: int
    tokenizer_dir: Path


def read_trained(ckpt_dir: str | os.PathLike, overrides: Sequence[str] = ()) -> TrainedState:
    """Verify and read a checkpoint directory; ``overrides`` (``a.b=c``) change its config.

    Raises:
        CheckpointError: not a complete checkpoint (manifest, weights) or no config.yaml / tokenizer/.
        etva.config.ConfigError: the stored config or an override is invalid.
    """
    root = Path(ckpt_dir)
    state = load_checkpoint(root, load_optimizer=False)
    if not state["config_yaml"] or state["tokenizer_dir"] is None:
        raise CheckpointError(f"{root}: the checkpoint has no config.yaml or tokenizer/ folder")
    source = f"{root}/config.yaml" + (" + overrides" if overrides else "")
    data = apply_overrides(yaml.safe_load(state["config_yaml"]) or {}, list(overrides))
    return TrainedState(
        root, config_from_dict(data, source), state["model"]["model"], int(state["meta"]["vocab_size"]),
        state["tokenizer_dir"],
    )  # fmt: skip


def build_trained_model(cfg: Config, vocab_size: int, weights: dict[str, torch.Tensor]) -> ETVA:
    """The ETVA model of ``cfg`` holding trained ``weights`` (a :class:`TrainedState`'s), in eval mode on
    the CPU. Used by :func:`load_trained` and by the distributed evaluation worker, which gets the
    weights through Ray's object store instead of reading the checkpoint on every rank."""
    model = build_model(cfg.model, vocab_size=vocab_size)
    model.load_state_dict(weights)
    return model.eval()


def load_trained(ckpt_dir: str | os.PathLike, overrides: Sequence[str] = ()) -> tuple[ETVA, Config, Any]:
    """``(model in eval mode on the CPU, config, tokenizer)`` of a checkpoint directory.

    Raises the errors of :func:`read_trained`.
    """
    trained = read_trained(ckpt_dir, overrides)
    model = build_trained_model(trained.cfg, trained.vocab_size, trained.weights)
    return model, trained.cfg, load_tokenizer(trained.tokenizer_dir)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def encode_tokens(
    model: ETVA,
    input_ids: np.ndarray | torch.Tensor,
    attention_mask: np.ndarray | torch.Tensor,
    batch_size: int = 256,
) -> TextEmbedding:
    """Encode tokenized captions, (Q, L) int64 ids and mask, ``batch_size`` at a time -> Q embeddings."""
    if len(input_ids) == 0:
        raise ValueError("encode_tokens: no text to encode")
    dev = _device(model)
    ids, mask = torch.as_tensor(input_ids), torch.as_tensor(attention_mask)
    return TextEmbedding.cat(
        [
            model.encode_text(ids[i : i + batch_size].to(dev), mask[i : i + batch_size].to(dev))
            for i in range(0, len(ids), batch_size)
        ]
    )


def encode_texts(
    model: ETVA, tokenizer: Any, texts: Sequence[str], max_len: int, batch_size: int = 256
) -> TextEmbedding:
    """Tokenize ``texts`` (the training tokenization, ``max_len`` tokens) and encode them -> Q embeddings."""
    ids, mask = tokenize(tokenizer, list(texts), max_len)  # (Q, L) each
    return encode_tokens(model, ids, mask, batch_size)


def stack_examples(examples: Sequence[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Decoded examples (``make_video_example`` dicts with the same keys) -> a batch of (B, ...) tensors."""
    return {k: torch.from_numpy(np.stack([ex[k] for ex in examples])) for k in examples[0]}


def _numeric_tensors(batch: dict[str, Any], dev: torch.device) -> dict[str, torch.Tensor]:
    """The tensor and numeric-array columns of a batch on ``dev`` (string columns such as ids dropped)."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, np.ndarray) and v.dtype.kind in "biuf":
            v = torch.from_numpy(v)
        if isinstance(v, torch.Tensor):
            out[k] = v.to(dev)
    return out


@torch.no_grad()
def encode_video_batches(
    model: ETVA, batches: Iterable[dict[str, np.ndarray | torch.Tensor]]
) -> VideoEmbedding:
    """Encode already stacked batches ({key: (B, ...)}, e.g. ``decode_batch`` output) -> one embedding.

    Only the video keys are used (frames, audio_mel, audio_mask, feat/*); others (ids, indices) are ignored.
    """
    dev, parts = _device(model), []
    for batch in batches:
        parts.append(model.encode_video(_numeric_tensors(batch, dev)))
    if not parts:
        raise ValueError("encode_videos: no video to encode")
    return VideoEmbedding.cat(parts)


def encode_videos(
    model: ETVA, examples: Iterable[dict[str, np.ndarray]], batch_size: int = 8
) -> VideoEmbedding:
    """Encode decoded examples (``make_video_example`` dicts) ``batch_size`` at a time -> rows in order."""

    def batches() -> Iterator[dict[str, torch.Tensor]]:
        batch: list[dict[str, np.ndarray]] = []
        for ex in examples:
            batch.append(ex)
            if len(batch) >= batch_size:
                yield stack_examples(batch)
                batch = []
        if batch:
            yield stack_examples(batch)

    return encode_video_batches(model, batches())


def decode_example(record: ClipRecord, data_cfg: Any) -> dict[str, np.ndarray] | str:
    """The model inputs of one clip (the training decode of ``data_cfg``), or why it cannot be decoded."""
    try:
        return make_video_example(record, data_cfg)
    except SKIPPABLE_ERRORS as e:
        return f"{type(e).__name__}: {e}"


@dataclass
class EncodedVideos:
    """The result of :func:`encode_records`."""

    video: VideoEmbedding | None  # one row per entry of ``kept`` (None when nothing decoded)
    kept: list[int] = field(default_factory=list)  # indices of the records that decoded, in order
    failed: dict[int, str] = field(default_factory=dict)  # record index -> why it could not be decoded


def encode_records(
    model: ETVA,
    records: Sequence[ClipRecord],
    data_cfg: Any,
    *,
    batch_size: int = 8,
    workers: int = 1,
    on_batch: Callable[[int], None] | None = None,
) -> EncodedVideos:
    """Decode (``workers`` threads) and encode ``records``, ``batch_size`` clips at a time.

    Clips that fail to decode (``SKIPPABLE_ERRORS``) are skipped and listed in ``failed``; ``on_batch``
    is called with the number of records handled after each batch (e.g. a progress bar's update).
    """
    out = EncodedVideos(None)
    parts: list[VideoEmbedding] = []
    pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None
    try:
        for start in range(0, len(records), batch_size):
            chunk = records[start : start + batch_size]
            decoded = list((pool.map if pool else map)(lambda r: decode_example(r, data_cfg), chunk))
            good = []
            for i, ex in enumerate(decoded, start):
                if isinstance(ex, str):
                    out.failed[i] = ex
                else:
                    out.kept.append(i)
                    good.append(ex)
            if good:
                parts.append(encode_videos(model, good, batch_size))
            if on_batch is not None:
                on_batch(len(chunk))
    finally:
        if pool is not None:
            pool.shutdown()
    out.video = VideoEmbedding.cat(parts) if parts else None
    return out
