"""Typed configuration tree, loaded from YAML with ``a.b=c`` command-line overrides.

One dataclass per component; each component is built from its own part only
(``build_model(cfg.model)``, ``build_loss(cfg.loss)``, ...). Unknown keys and wrong types are
errors that name the key and the file they came from.

A YAML file may start with ``base: other.yaml`` (a path relative to the file) to inherit from another
file; its keys are merged on top of the base, dict by dict.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

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
    "Config",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "apply_overrides",
    "flatten",
]


class ConfigError(ValueError):
    """A configuration key is unknown, has the wrong type, or a file cannot be read."""


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


@dataclass
class DataConfig:
    dataset: str = "msrvtt"  # msrvtt | activitynet | lsmdc | features
    root: str = ""  # dataset root (absolute, or relative to the current directory)
    synthesize_if_missing: bool = False  # generate the shapes benchmark under root when it has no data
    subset: str = "1k-A"  # msrvtt: 1k-A | 1k-B | full | 7k
    train_split: str = "train"
    val_split: str = "test"
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
    features_dir: str = ""  # pre-extracted expert features (dataset=features or extra experts)
    max_feature_tokens: int = 32  # N: pre-extracted features sampled/padded to N tokens per expert
    feature_store: str = ""  # Parquet feature store written by ray_jobs.extract (docs/features.md)
    decode_clips: bool = True  # false = open no video file (every enabled expert is a features expert)
    synth: SynthConfig = field(default_factory=SynthConfig)


@dataclass
class TextConfig:
    preset: str = "tiny"  # tiny | albert-base-v2
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
    kind: str = "appearance"  # appearance | motion | audio | features | pretrained
    enabled: bool = True
    dim: int = 0  # input feature dim (features experts); 0 = the built-in encoder's own width
    width: int = 64  # internal channel width of built-in encoders
    prior: float = 1.0  # prior mixture weight (multiplies the text-predicted weight)
    # frozen pretrained encoder: run inline (kind=pretrained) or offline by ray_jobs.extract
    encoder: str = ""  # "" | clip | videomae | ast
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
    vlad_mode: str = "shared"  # shared | separate | text
    alignment: str = "both"  # global | local | both
    alpha: float = 0.5  # s = alpha * s_global + (1 - alpha) * s_local


@dataclass
class LossConfig:
    kind: str = "infonce"  # infonce | margin
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
    fail_at_epoch: int = -1  # fault injection for tests: a worker dies during this epoch (-1 = never)
    fail_once_marker: str = ""  # file created at the injected failure so it fires only once


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
    num_to_keep: int = 2


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
    search: str = "random"  # random | grid | optuna
    scheduler: str = "asha"  # asha | fifo
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
    """ray_jobs.extract: frozen pretrained encoders -> a Parquet feature store (docs/features.md)."""

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
    dtype: str = "float32"  # stored feature dtype: float32 | float16
    torch_threads: int = 1  # intra-op threads per CPU actor


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


# --------------------------------------------------------------------------------------------------
# dict <-> dataclass with type checking


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check/convert ``value`` to type ``tp``; raise ConfigError naming ``key`` and ``source``."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: key '{key}' expects a mapping, got {type(value).__name__}")
        return _build(tp, value, key, source)
    if origin is dict:
        _, vtp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: key '{key}' expects a mapping, got {type(value).__name__}")
        return {str(k): _convert(v, vtp, f"{key}.{k}", source) for k, v in value.items()}
    if origin is list:
        (etp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{source}: key '{key}' expects a list, got {type(value).__name__}")
        return [_convert(v, etp, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], key, source)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    else:  # pragma: no cover - every field type is covered above
        return value
    raise ConfigError(
        f"{source}: key '{key}' expects {_type_name(tp)}, got {type(value).__name__} ({value!r})"
    )


def _build(cls: type, data: dict, prefix: str, source: str):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(
                f"{source}: unknown key '{full}' (known keys under '{prefix or '<top>'}': "
                f"{', '.join(sorted(names))})"
            )
        kwargs[key] = _convert(value, hints[key], full, source)
    return cls(**kwargs)


def config_from_dict(data: dict, source: str = "<dict>") -> Config:
    """Build a :class:`Config` from a nested dict, checking every key and type."""
    return _build(Config, data or {}, "", source)


def config_to_dict(cfg: Any) -> dict:
    """The resolved config as plain nested dicts (YAML/JSON serialisable)."""
    return dataclasses.asdict(cfg)


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts to ``{"a.b.c": value}`` (for MLflow params)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


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
        data = _merge(_read_yaml(path.parent / base, (*seen, path)), data)
    # check this file's keys against the schema so the error names the right file
    config_from_dict(data, str(path))
    return data


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Apply ``a.b=c`` overrides (values parsed as YAML scalars) to a nested dict."""
    data = _merge({}, data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected the form key.path=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override '{item}': value is not valid YAML: {e}") from e
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            nxt = node.get(p)
            if not isinstance(nxt, dict):
                nxt = {}
                node[p] = nxt
            node = nxt
        node[parts[-1]] = value
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


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (loadable by :func:`load_config`)."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
