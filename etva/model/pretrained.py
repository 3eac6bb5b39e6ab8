"""Frozen pretrained encoders (``transformers``), loaded only from local folders.

Three kinds, each mapping a batch of clips to a token sequence ``(B, N, D)``:

- ``clip``: a CLIP vision tower, one embedding per frame (``N = T``). Pooling ``proj`` (the CLIP joint
  space, ``image_embeds``), ``cls`` (post-layernorm class token) or ``mean`` (mean of patch tokens).
- ``videomae``: a VideoMAE encoder over ``config.num_frames`` frames resampled from the clip; pooling
  ``time`` (one token per tubelet step, mean over space) or ``mean`` (one token).
- ``ast``: an Audio Spectrogram Transformer over Kaldi-style filter banks of the waveform
  (``ASTFeatureExtractor``); pooling ``cls`` (mean of the cls/distillation tokens), ``mean`` or ``time``
  (one token per time patch column).

``layer`` picks a hidden layer (-1 = the last). Weights are never downloaded: every load passes
``local_files_only=True``; get them once with ``hf download <model> --local-dir DIR``.
:class:`PretrainedExpert` runs an encoder inline as a frozen model expert (``kind: pretrained``); the
extraction job (``ray_jobs/extract.py``) runs the same encoders offline into a feature store.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from etva.data.sampling import sample_indices
from etva.model.expert_base import Expert

log = logging.getLogger(__name__)

ENCODER_KINDS = ("clip", "videomae", "ast")
POOLINGS = {"clip": ("proj", "cls", "mean"), "videomae": ("time", "mean"), "ast": ("cls", "mean", "time")}
_CLIP_STATS = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
_IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def _check_folder(path: str, where: str) -> Path:
    if not path:
        raise ValueError(
            f"{where}: a local folder with config.json + weights is required "
            "(download it once with `hf download <model> --local-dir DIR`)"
        )
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{where}: {folder} has no config.json (expected a folder written by `hf download "
            "<model> --local-dir DIR` or `save_pretrained`)"
        )
    return folder


def weight_hashes(path: str | Path) -> dict[str, str]:
    """``{file name: sha256}`` of the weight files in a model folder (identity of the encoder)."""
    out = {}
    for f in sorted(Path(path).iterdir()):
        if f.is_file() and f.name.endswith(_WEIGHT_SUFFIXES):
            h = hashlib.sha256()
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            out[f.name] = h.hexdigest()
    if not out:
        raise FileNotFoundError(f"{path}: no weight files ({', '.join(_WEIGHT_SUFFIXES)})")
    return out


def _image_stats(folder: Path, default: tuple) -> tuple[Tensor, Tensor]:
    """Pixel mean/std from ``preprocessor_config.json`` when present, else the model family's."""
    mean, std = default
    pre = folder / "preprocessor_config.json"
    if pre.is_file():
        data = json.loads(pre.read_text())
        mean, std = data.get("image_mean", mean), data.get("image_std", std)
    return torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)


def _to_pixels(frames: Tensor, size: int, mean: Tensor, std: Tensor) -> Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, size, size), resized (bilinear) and normalised."""
    x = frames.permute(0, 3, 1, 2).float() / 255.0
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (x - mean.to(x.device)) / std.to(x.device)


class FrozenEncoder(nn.Module):
    """A frozen encoder: ``forward(x) -> (B, N, dim)``; ``input`` is ``frames`` or ``audio``."""

    kind: str
    input: str
    dim: int

    def __init__(self, folder: Path, layer: int, pooling: str) -> None:
        super().__init__()
        self.folder, self.layer, self.pooling = folder, layer, pooling

    def _load(self, model_cls):
        """``model_cls`` from the local folder (never a hub), frozen in eval mode; returns its config."""
        self.model = model_cls.from_pretrained(str(self.folder), local_files_only=True)
        self.model.eval()
        self.model.requires_grad_(False)
        return self.model.config

    def train(self, mode: bool = True):  # always inference mode (dropout off)
        super().train(mode)
        self.model.eval()
        return self

    def _hidden(self, out) -> Tensor:
        """The hidden layer ``self.layer`` of a transformers output."""
        if self.layer == -1:
            return out.last_hidden_state
        states = out.hidden_states
        if not -len(states) <= self.layer < len(states):
            raise ValueError(f"{self.folder}: layer {self.layer} out of range ({len(states)} hidden states)")
        return states[self.layer]

    @property
    def model_name(self) -> str:
        return str(getattr(self.model.config, "_name_or_path", "") or self.folder.name)


class ClipFrameEncoder(FrozenEncoder):
    """CLIP vision tower: frames uint8 (B, T, H, W, 3) -> (B, T, D)."""

    kind, input = "clip", "frames"

    def __init__(self, folder: Path, layer: int, pooling: str) -> None:
        super().__init__(folder, layer, pooling)
        # lazy: transformers takes 1.4 s CPU to import (its vision/audio models 8 s), paid only when needed
        from transformers import CLIPVisionModel, CLIPVisionModelWithProjection

        cls = CLIPVisionModelWithProjection if pooling == "proj" else CLIPVisionModel
        cfg = self._load(cls)
        self.size = cfg.image_size
        self.dim = cfg.projection_dim if pooling == "proj" else cfg.hidden_size
        mean, std = _image_stats(folder, _CLIP_STATS)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def out_tokens(self, num_frames: int) -> int:
        return num_frames

    @torch.no_grad()
    def forward(self, frames: Tensor) -> Tensor:
        b, t = frames.shape[:2]
        x = _to_pixels(frames.flatten(0, 1), self.size, self.mean, self.std)  # (B*T, 3, S, S)
        hidden = self.layer != -1
        out = self.model(pixel_values=x, output_hidden_states=hidden)
        if self.pooling == "proj":
            y = out.image_embeds  # (B*T, P)
        elif self.pooling == "cls":
            y = out.pooler_output if not hidden else self._hidden(out)[:, 0]
        else:
            y = self._hidden(out)[:, 1:].mean(1)
        return y.reshape(b, t, -1)


class VideoMAEEncoder(FrozenEncoder):
    """VideoMAE: frames uint8 (B, T, H, W, 3) -> (B, F / tubelet, D) (``time``) or (B, 1, D)."""

    kind, input = "videomae", "frames"

    def __init__(self, folder: Path, layer: int, pooling: str) -> None:
        super().__init__(folder, layer, pooling)
        # lazy: transformers takes 1.4 s CPU to import (its vision/audio models 8 s), paid only when needed
        from transformers import VideoMAEModel

        cfg = self._load(VideoMAEModel)
        self.size, self.frames, self.tubelet = cfg.image_size, cfg.num_frames, cfg.tubelet_size
        self.patches = (cfg.image_size // cfg.patch_size) ** 2
        self.dim = cfg.hidden_size
        mean, std = _image_stats(folder, _IMAGENET_STATS)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def out_tokens(self, num_frames: int) -> int:
        return self.frames // self.tubelet if self.pooling == "time" else 1

    @torch.no_grad()
    def forward(self, frames: Tensor) -> Tensor:
        b, t = frames.shape[:2]
        idx = torch.as_tensor(sample_indices(t, self.frames), device=frames.device)
        x = _to_pixels(frames[:, idx].flatten(0, 1), self.size, self.mean, self.std)  # (B*F, 3, S, S)
        x = x.view(b, self.frames, *x.shape[1:])  # (B, F, 3, S, S)
        out = self.model(pixel_values=x, output_hidden_states=self.layer != -1)
        h = self._hidden(out)  # (B, F/tubelet * P, D)
        h = h.view(b, self.frames // self.tubelet, self.patches, -1).mean(2)  # (B, F', D)
        return h if self.pooling == "time" else h.mean(1, keepdim=True)


class ASTEncoder(FrozenEncoder):
    """Audio Spectrogram Transformer: filter banks (B, L, M) -> (B, N, D).

    :meth:`fbank` turns one waveform into the model's (L, M) input (CPU, numpy).
    """

    kind, input = "ast", "audio"

    def __init__(self, folder: Path, layer: int, pooling: str) -> None:
        super().__init__(folder, layer, pooling)
        # lazy: transformers takes 1.4 s CPU to import (its vision/audio models 8 s), paid only when needed
        from transformers import ASTFeatureExtractor, ASTModel

        cfg = self._load(ASTModel)
        self.dim, self.max_length, self.mel_bins = cfg.hidden_size, cfg.max_length, cfg.num_mel_bins
        self.f_out = (cfg.num_mel_bins - cfg.patch_size) // cfg.frequency_stride + 1
        self.t_out = (cfg.max_length - cfg.patch_size) // cfg.time_stride + 1
        if (folder / "preprocessor_config.json").is_file():
            self.extractor = ASTFeatureExtractor.from_pretrained(str(folder), local_files_only=True)
        else:
            self.extractor = ASTFeatureExtractor(num_mel_bins=cfg.num_mel_bins, max_length=cfg.max_length)
        self.sample_rate = int(self.extractor.sampling_rate)

    def fbank(self, waveform: np.ndarray, rate: int) -> np.ndarray:
        """float32 (S,) mono at ``rate`` (must be the extractor's rate) -> float32 (L, M)."""
        if rate != self.sample_rate:
            raise ValueError(
                f"{self.folder}: audio at {rate} Hz, the AST extractor expects {self.sample_rate}"
            )
        feats = self.extractor(waveform.astype(np.float32), sampling_rate=rate, return_tensors="np")
        return feats["input_values"][0].astype(np.float32)

    def out_tokens(self, num_frames: int) -> int:
        return self.t_out if self.pooling == "time" else 1

    @torch.no_grad()
    def forward(self, fbank: Tensor) -> Tensor:
        if fbank.dim() != 3 or fbank.shape[2] != self.mel_bins:
            raise ValueError(f"AST input: expected (B, L, {self.mel_bins}), got {tuple(fbank.shape)}")
        x = fbank.float()
        if x.shape[1] != self.max_length:  # crop / zero-pad time to the model's length
            x = F.pad(x[:, : self.max_length], (0, 0, 0, max(0, self.max_length - x.shape[1])))
        out = self.model(input_values=x, output_hidden_states=self.layer != -1)
        if self.pooling == "cls":
            y = out.pooler_output if self.layer == -1 else self._hidden(out)[:, :2].mean(1)
            return y.unsqueeze(1)  # (B, 1, D)
        h = self._hidden(out)[:, 2:]  # (B, f_out * t_out, D), frequency-major
        if self.pooling == "mean":
            return h.mean(1, keepdim=True)
        return h.reshape(h.shape[0], self.f_out, self.t_out, -1).mean(1)  # (B, t_out, D)


_ENCODERS = {"clip": ClipFrameEncoder, "videomae": VideoMAEEncoder, "ast": ASTEncoder}


def load_encoder(kind: str, path: str, layer: int = -1, pooling: str = "", where: str = "") -> FrozenEncoder:
    """Load a frozen encoder of ``kind`` from the local folder ``path`` (never from a hub).

    Args:
        kind: clip | videomae | ast.
        pooling: one of :data:`POOLINGS` [kind]; "" = the first (the default).
        where: the config key named in errors (e.g. ``model.experts.appearance``).
    """
    folder, pooling = _checked(kind, path, pooling, where or "encoder")
    enc = _ENCODERS[kind](folder, layer, pooling)
    log.info("loaded frozen %s encoder from %s (dim %d, pooling %s)", kind, folder, enc.dim, pooling)
    return enc


def _checked(kind: str, path: str, pooling: str, where: str) -> tuple[Path, str]:
    """The encoder's folder and pooling (default: the kind's first), or a ValueError naming the key."""
    if kind not in _ENCODERS:
        raise ValueError(f"{where}.encoder: unknown '{kind}', expected one of {list(ENCODER_KINDS)}")
    pooling = pooling or POOLINGS[kind][0]
    if pooling not in POOLINGS[kind]:
        raise ValueError(f"{where}.pooling: '{pooling}' is not one of {POOLINGS[kind]} for {kind}")
    return _check_folder(path, f"{where}.pretrained_path"), pooling


def encoder_dim(kind: str, path: str, pooling: str = "", where: str = "encoder") -> tuple[int, str, str]:
    """``(dim, pooling, model_type)`` of an encoder from its config alone (no weights loaded)."""
    # lazy: transformers takes 1.4 s CPU to import (its vision/audio models 8 s), paid only when needed
    from transformers import ASTConfig, CLIPVisionConfig, VideoMAEConfig

    folder, pooling = _checked(kind, path, pooling, where)
    cls = {"clip": CLIPVisionConfig, "videomae": VideoMAEConfig, "ast": ASTConfig}[kind]
    cfg = cls.from_pretrained(str(folder), local_files_only=True)
    dim = cfg.projection_dim if (kind, pooling) == ("clip", "proj") else cfg.hidden_size
    model_type = json.loads((folder / "config.json").read_text()).get("model_type", "")
    return int(dim), pooling, str(model_type)


class PretrainedExpert(Expert):
    """A frozen encoder run inline on the training batch (``kind: pretrained``).

    clip / videomae read ``frames``; ast reads ``audio_mel`` (B, A, M) and needs ``data.num_mel_bins``
    equal to the model's mel bins (the training log-mel, not AST's Kaldi filter banks: prefer the offline
    store for audio). Output ``(B, N, dim)``; the mask is all True (audio: False for a silent clip).
    """

    def __init__(self, name: str, encoder: FrozenEncoder) -> None:
        super().__init__()
        self.name, self.encoder, self.out_dim = name, encoder, encoder.dim

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        key = "frames" if self.encoder.input == "frames" else "audio_mel"
        if key not in batch:
            raise KeyError(
                f"pretrained expert '{self.name}': batch has no '{key}' (data.decode_clips=false?)"
            )
        y = self.encoder(batch[key])  # (B, N, D)
        mask = torch.ones(y.shape[:2], dtype=torch.bool, device=y.device)
        if key == "audio_mel":
            mask &= batch["audio_mask"].to(y.device).any(1, keepdim=True)
        return y, mask


def build_pretrained_expert(name: str, cfg) -> PretrainedExpert:
    """:class:`PretrainedExpert` from an :class:`etva.config.ExpertConfig` (``kind: pretrained``)."""
    where = f"model.experts.{name}"
    return PretrainedExpert(
        name, load_encoder(cfg.encoder, cfg.pretrained_path, cfg.layer, cfg.pooling, where)
    )
