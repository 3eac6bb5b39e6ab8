"""Typed configuration tree, loaded from YAML with ``a.b=c`` command-line overrides.

One dataclass per component; each component is built from its own part only
(``build_model(cfg.model)``, ``build_loss(cfg.loss)``, ...). Unknown keys, wrong types, values outside
a field's choices (``Literal`` fields) and numbers outside a field's range (:data:`RANGES`) are refused
at load time, with an error naming the key, the value, what was expected and the file it came from.

A YAML file may start with ``base: other.yaml`` (a path relative to the file) to inherit from another
file; its keys are merged on top of the base, dict by dict.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from etva.config.choices import (  # re-exported: etva.config.Precision, ...
    CHOICE_ALIASES,
    Alignment,
    Dataset,
    DecodeCache,
    Encoder,
    ExpertKind,
    FeatureDtype,
    LossKind,
    MsrvttSubset,
    ObjectWords,
    Precision,
    Reweight,
    SynthMode,
    TextPreset,
    TuneScheduler,
    TuneSearch,
    VladMode,
)
from etva.config.schema import (
    AT_LEAST_1,
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    ConfigError,
    Range,
    Schema,
    apply_overrides,
    flatten,
    merge_dicts,
)

__all__ = [
    "ConfigError",
    "DataConfig",
    "SynthConfig",
    "TextConfig",
    "ExpertConfig",
    "ModelConfig",
    "LossConfig",
    "OptimConfig",
    "TrainConfig",
    "RayConfig",
    "MlflowConfig",
    "TuneConfig",
    "ExtractConfig",
    "EvalConfig",
    "Config",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "apply_overrides",
    "flatten",
    "RANGES",
    "CHOICE_ALIASES",
]


@dataclass
class SynthConfig:
    """The synthetic "shapes" benchmark generated when ``data.root`` is empty or missing."""

    num_videos: int = 160
    seed: int = 0
    width: int = 160
    height: int = 120
    fps: int = 15
    duration_s: float = 4.0
    captions_per_video: int = 10
    mode: SynthMode = "shapes"  # compositional: bound attributes, ordered events, a timed sound
    object_words: ObjectWords = "phrase"  # compositional: "a golden disc" | fused "a yellowcircle" (docs/study.md)


@dataclass
class DataConfig:
    dataset: Dataset = "msrvtt"
    root: str = ""  # dataset root (absolute, or relative to the current directory)
    synthesize_if_missing: bool = False  # generate the shapes benchmark under root when it has no data
    subset: MsrvttSubset = "1k-A"  # msrvtt protocol (aliases such as 1k-a, jsfusion, miech accepted)
    train_split: str = "train"
    val_split: str = "test"  # selects the checkpoint (ignored when val_from_train > 0)
    val_from_train: int = 0  # > 0: carve this many training videos (deterministic) as the validation split
    test_split: str = ""  # reported for the selected checkpoint after training ("" = none)
    num_frames: int = 8
    frame_size: int = 64  # square crop, pixels
    audio_rate: int = 16000
    num_mel_bins: int = 40
    max_audio_s: float = 4.0
    max_text_len: int = 32
    tokenizer_path: str = ""  # local ALBERT tokenizer dir; empty = train SentencePiece on the train captions
    vocab_size: int = 1000
    max_caption_chars: int = 1000  # longer captions are truncated (counted)
    max_skip_fraction: float = 0.01  # abort when more clips than this fail to decode
    decode_threads: int = 1
    cache: DecodeCache = "none"  # none | memory (object store) | disk (Parquet under ray.storage_path)
    max_feature_tokens: int = 32  # N: pre-extracted features sampled/padded to N tokens per expert
    feature_store: str = ""  # Parquet feature store written by ray_jobs.extract (docs/features.md)
    decode_clips: bool = True  # false = open no video file (every enabled expert is a features expert)
    synth: SynthConfig = field(default_factory=SynthConfig)


@dataclass
class TextConfig:
    preset: TextPreset = "tiny"
    pretrained_path: str = ""  # local directory with config.json + weights (albert-base-v2)
    hidden_size: int = 128
    embedding_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 256
    max_position: int = 64
    freeze: bool = False


@dataclass
class ExpertConfig:
    kind: ExpertKind = "appearance"
    enabled: bool = True
    dim: int = 0  # input feature dim (features experts); 0 = the built-in encoder's own width
    width: int = 64  # internal channel width of built-in encoders
    grid: int = 1  # appearance/motion: tokens per frame = grid x grid regions (1 = the whole frame)
    ring: bool = False  # motion/audio: time as a ring, rotating a clip rotates its tokens (docs/study.md)
    prior: float = 1.0  # prior mixture weight (multiplies the text-predicted weight)
    # frozen pretrained encoder: run inline (kind=pretrained) or offline by ray_jobs.extract
    encoder: Encoder = ""  # "" (none) | clip | videomae | ast
    pretrained_path: str = ""  # local folder with config.json + weights (never downloaded)
    layer: int = -1  # hidden layer to pool (-1 = the last)
    pooling: str = ""  # "" = the encoder's default; clip: proj | cls | mean; videomae: time | mean;
    # ast: cls | mean | time


def _default_experts() -> dict[str, ExpertConfig]:
    return {
        "appearance": ExpertConfig(kind="appearance"),
        "motion": ExpertConfig(kind="motion"),
        "audio": ExpertConfig(kind="audio"),
    }


@dataclass
class ModelConfig:
    d: int = 128  # joint embedding / token width
    text: TextConfig = field(default_factory=TextConfig)
    experts: dict[str, ExpertConfig] = field(default_factory=_default_experts)
    fusion_layers: int = 1
    fusion_heads: int = 4
    dropout: float = 0.1
    num_clusters: int = 16
    ghost_clusters: int = 1
    vlad_mode: VladMode = "shared"
    alignment: Alignment = "both"
    alpha: float = 0.5  # s = alpha * s_global + (1 - alpha) * s_local


@dataclass
class LossConfig:
    kind: LossKind = "infonce"
    temperature: float = 0.05  # initial value
    learnable_temperature: bool = True
    margin: float = 0.2
    hardest_negative: bool = True
    lambda_global: float = 1.0
    lambda_local: float = 1.0
    lambda_fused: float = 1.0


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    grad_clip: float = 1.0
    text_lr_scale: float = 1.0  # lr multiplier for the text encoder (e.g. 0.1 for pretrained ALBERT)


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 32  # per worker
    eval_batch_size: int = 64
    seed: int = 0
    log_every: int = 10
    precision: Precision = "fp32"  # bf16/fp16: encoders under autocast; scores and loss in fp32
    group_batches: bool = False  # each batch whole groups (a grouped benchmark's hard negatives together)


@dataclass
class RayConfig:
    address: str = "auto"
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 0.5
    gpus_per_worker: float = 1.0
    decode_cpus: float = 0.25  # per decode task/actor
    decode_concurrency: int = 2
    storage_path: str = ""  # absolute path or URI; empty = <repo>/runs/ray
    run_name: str = ""  # stable name: re-running with the same name resumes the run
    max_failures: int = 2
    keep_recent: int = 2  # checkpoints kept besides the best: the most recent N (older ones deleted)


@dataclass
class MlflowConfig:
    tracking_uri: str = ""  # http://host:port; empty = $MLFLOW_TRACKING_URI
    experiment: str = "etva"
    log_checkpoint: bool = True
    register_model: str = ""  # registered model name for `etva best`


@dataclass
class TuneConfig:
    space: str = ""  # YAML search space file
    num_samples: int = 4
    search: TuneSearch = "random"
    scheduler: TuneScheduler = "asha"
    metric: str = "val/t2v_R1"
    grace_period: int = 1
    max_epochs: int = 4
    reduction_factor: int = 2
    time_budget_s: float = 3600.0
    max_concurrent_trials: int = 0  # 0 = derived from the cluster's resources


def _default_splits() -> list[str]:
    return ["train", "test"]


@dataclass
class ExtractConfig:
    """The extraction job (python -m ray_jobs.extract): frozen pretrained encoders -> a Parquet feature
    store (docs/features.md)."""

    experts: list[str] = field(default_factory=list)  # model.experts names; empty = all with an encoder
    output_dir: str = ""  # store root; one store per expert: <output_dir>/<expert>-<key>/
    splits: list[str] = field(default_factory=_default_splits)
    num_frames: int = 16  # decoded frames per clip (encoders resample to their own frame count)
    frame_size: int = 224  # square crop, pixels
    audio_rate: int = 16000
    max_audio_s: float = 10.0
    batch_size: int = 8  # clips per encoder call
    shard_size: int = 64  # clips per Parquet shard
    num_actors: int = 1  # encoder actors per expert (one loaded encoder each)
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 1.0  # when the cluster has GPUs (fractional allowed); CPU actors otherwise
    decode_cpus: float = 1.0  # per decode task
    decode_concurrency: int = 1
    dtype: FeatureDtype = "float32"  # stored feature dtype
    torch_threads: int = 1  # intra-op threads per CPU actor


@dataclass
class EvalConfig:
    """Test-split evaluation. ``reweight`` (over all queries, etva.eval.reweight) is a separate row, never
    used for selection. A split of up to ``in_process_max_videos`` videos is scored in the calling process."""

    reweight: Reweight = "none"
    reweight_scale: float = 30.0  # inverse temperature of the softmax over queries
    in_process_max_videos: int = 1000


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# --------------------------------------------------------------------------------------------------
# numeric ranges, per dataclass field (checked after the type)
RANGES: dict[type, dict[str, Range]] = {
    SynthConfig: {
        "num_videos": AT_LEAST_1, "width": AT_LEAST_1, "height": AT_LEAST_1, "fps": AT_LEAST_1,
        "duration_s": POSITIVE, "captions_per_video": AT_LEAST_1,
    },
    DataConfig: {
        "num_frames": AT_LEAST_1, "frame_size": AT_LEAST_1, "audio_rate": AT_LEAST_1,
        "num_mel_bins": AT_LEAST_1, "max_audio_s": POSITIVE, "max_text_len": AT_LEAST_1,
        "vocab_size": AT_LEAST_1, "max_caption_chars": NON_NEGATIVE, "max_skip_fraction": FRACTION,
        "val_from_train": NON_NEGATIVE,
        "decode_threads": NON_NEGATIVE, "max_feature_tokens": AT_LEAST_1,
    },
    TextConfig: {
        "hidden_size": AT_LEAST_1, "embedding_size": AT_LEAST_1, "num_layers": AT_LEAST_1,
        "num_heads": AT_LEAST_1, "intermediate_size": AT_LEAST_1, "max_position": AT_LEAST_1,
    },
    ExpertConfig: {"dim": NON_NEGATIVE, "width": AT_LEAST_1, "prior": POSITIVE, "grid": AT_LEAST_1},
    ModelConfig: {
        "d": AT_LEAST_1, "fusion_layers": NON_NEGATIVE, "fusion_heads": AT_LEAST_1,
        "dropout": Range(0, 1), "num_clusters": AT_LEAST_1, "ghost_clusters": NON_NEGATIVE,
        "alpha": FRACTION,
    },
    LossConfig: {
        "temperature": POSITIVE, "margin": NON_NEGATIVE, "lambda_global": NON_NEGATIVE,
        "lambda_local": NON_NEGATIVE, "lambda_fused": NON_NEGATIVE,
    },
    OptimConfig: {
        "lr": POSITIVE, "weight_decay": NON_NEGATIVE, "warmup_steps": NON_NEGATIVE,
        "grad_clip": NON_NEGATIVE, "text_lr_scale": NON_NEGATIVE,
    },
    TrainConfig: {
        "epochs": AT_LEAST_1, "batch_size": AT_LEAST_1, "eval_batch_size": AT_LEAST_1,
        "log_every": NON_NEGATIVE,
    },
    RayConfig: {
        "num_workers": AT_LEAST_1, "cpus_per_worker": NON_NEGATIVE, "gpus_per_worker": NON_NEGATIVE,
        "decode_cpus": NON_NEGATIVE, "decode_concurrency": AT_LEAST_1, "max_failures": Range(-1),
        "keep_recent": NON_NEGATIVE,
    },
    TuneConfig: {
        "num_samples": AT_LEAST_1, "grace_period": AT_LEAST_1, "max_epochs": AT_LEAST_1,
        "reduction_factor": Range(2), "time_budget_s": POSITIVE, "max_concurrent_trials": NON_NEGATIVE,
    },
    ExtractConfig: {
        "num_frames": AT_LEAST_1, "frame_size": AT_LEAST_1, "audio_rate": AT_LEAST_1, "max_audio_s": POSITIVE,
        "batch_size": AT_LEAST_1, "shard_size": AT_LEAST_1, "num_actors": AT_LEAST_1,
        "cpus_per_actor": NON_NEGATIVE, "gpus_per_actor": NON_NEGATIVE, "decode_cpus": NON_NEGATIVE,
        "decode_concurrency": AT_LEAST_1, "torch_threads": AT_LEAST_1,
    },
    EvalConfig: {"reweight_scale": POSITIVE, "in_process_max_videos": NON_NEGATIVE},
}  # fmt: skip


# dict <-> dataclass with type, choice and range checking

_SCHEMA = Schema(RANGES, CHOICE_ALIASES)


def config_from_dict(data: dict, source: str = "<dict>") -> Config:
    """Build a :class:`Config` from a nested dict, checking every key and type."""
    return _SCHEMA.build(Config, data or {}, "", source)


def config_to_dict(cfg: Any) -> dict:
    """The resolved config as plain nested dicts (YAML/JSON serialisable)."""
    return dataclasses.asdict(cfg)


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: 'base' chain loops back to itself")
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file ({e.strerror})") from e
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: key 'base' expects a file path string")
        data = merge_dicts(_read_yaml(path.parent / base, (*seen, path)), data)
    # check this file's keys against the schema so the error names the right file
    config_from_dict(data, str(path))
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a config file (or the defaults when ``path`` is None) and apply ``a.b=c`` overrides."""
    data = _read_yaml(Path(path)) if path else {}
    source = str(Path(path).resolve()) if path else "<defaults>"
    cfg = config_from_dict(data, source)
    if overrides:
        # overrides merge into the *resolved* tree, so `model.experts.audio.enabled=false` keeps the
        # other experts of the file (or of the defaults)
        data = apply_overrides(config_to_dict(cfg), overrides)
        cfg = config_from_dict(data, f"{source} + command-line overrides")
    return cfg
