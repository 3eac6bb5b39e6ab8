"""The paper-scale ETVA model of ``benchmarks.gpu_check`` and its random inputs: sizes (full and
``--quick``), the model config, one training step as the training job takes it."""

from __future__ import annotations

import dataclasses

import torch

from etva.config import ExpertConfig, LossConfig, ModelConfig, OptimConfig, TextConfig
from etva.model import build_model
from etva.train.engine import build_optimizer, train_step
from etva.train.losses import build_loss


@dataclasses.dataclass
class Sizes:
    batch: int = 128
    text_len: int = 32
    feat_tokens: int = 32
    vocab: int = 30_000
    hidden: int = 768
    layers: int = 12
    heads: int = 12
    intermediate: int = 3072
    embedding: int = 128
    d: int = 512
    clusters: int = 16
    fusion_layers: int = 2
    fusion_heads: int = 8
    experts: tuple[tuple[str, int], ...] = (("clip", 512), ("video", 768), ("audio", 768))
    steps: int = 20
    warmup: int = 3
    queries: int = 59_800
    videos: int = 2_990
    encode_batch: int = 1024
    query_chunk: int = 8192
    gemm_n: int = 8192


QUICK = Sizes(
    batch=8, text_len=12, feat_tokens=6, vocab=1000, hidden=64, layers=2, heads=4, intermediate=128,
    embedding=32, d=64, clusters=8, fusion_layers=1, fusion_heads=4,
    experts=(("clip", 32), ("video", 48), ("audio", 48)), steps=3, warmup=1,
    queries=2000, videos=100, encode_batch=256, query_chunk=512, gemm_n=512,
)  # fmt: skip


def model_config(s: Sizes) -> ModelConfig:
    text = TextConfig(
        preset="tiny", hidden_size=s.hidden, embedding_size=s.embedding, num_layers=s.layers,
        num_heads=s.heads, intermediate_size=s.intermediate, max_position=max(64, s.text_len),
    )  # fmt: skip
    experts = {n: ExpertConfig(kind="features", dim=dim, width=s.d) for n, dim in s.experts}
    return ModelConfig(
        d=s.d, text=text, experts=experts, fusion_layers=s.fusion_layers, fusion_heads=s.fusion_heads,
        num_clusters=s.clusters,
    )  # fmt: skip


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def text_inputs(n: int, s: Sizes, device: torch.device, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Random token ids (n, L) with random lengths >= 4 and the matching attention mask."""
    ids = torch.randint(5, s.vocab, (n, s.text_len), generator=g)  # (n, L)
    lengths = torch.randint(4, s.text_len + 1, (n, 1), generator=g)
    mask = (torch.arange(s.text_len)[None, :] < lengths).long()  # (n, L)
    return {"input_ids": (ids * mask).to(device), "attention_mask": mask.to(device)}


def video_inputs(n: int, s: Sizes, device: torch.device, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Random features ``feat/<name>`` (n, N, dim); the last expert (audio) is missing for ~1/4."""
    out: dict[str, torch.Tensor] = {}
    silent = torch.rand(n, generator=g) < 0.25
    for i, (name, dim) in enumerate(s.experts):
        out[f"feat/{name}"] = torch.randn(n, s.feat_tokens, dim, generator=g).to(device)
        mask = torch.ones(n, s.feat_tokens, dtype=torch.bool)
        if i == len(s.experts) - 1:
            mask[silent] = False
        out[f"feat_mask/{name}"] = mask.to(device)
    return out


def build(s: Sizes, device: torch.device, seed: int = 0):
    """Model + loss on ``device``, AdamW over both (as the training job builds them)."""
    torch.manual_seed(seed)
    model = build_model(model_config(s), vocab_size=s.vocab).to(device)
    loss_fn = build_loss(LossConfig()).to(device)
    opt = build_optimizer(torch.nn.ModuleList([model, loss_fn]), OptimConfig())
    return model, loss_fn, opt


def step(model, loss_fn, opt, batch: dict, dtype: torch.dtype | None) -> float:
    """One training step as ``etva.train.engine.train_epoch`` does it; ``dtype`` = autocast dtype or None."""
    device = next(model.parameters()).device
    with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        total, _ = train_step(model, loss_fn, batch)
    opt.zero_grad(set_to_none=True)
    total.backward()
    torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
    opt.step()
    return float(total.detach())
