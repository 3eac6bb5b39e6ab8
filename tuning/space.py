"""Search spaces as YAML: config override paths -> sampling specs -> Ray Tune param space -> configs.

A space file maps config paths to one spec each::

    model.num_clusters: {grid: [8, 16, 32, 64]}      # every value, in every search mode
    model.experts.audio.enabled: {choice: [true, false]}
    optim.lr: {loguniform: [1.0e-4, 3.0e-3]}
    loss.lambda_local: {uniform: [0.25, 2.0]}
    train.seed: {randint: [0, 100]}                  # high end exclusive, like tune.randint
    loss.temperature: 0.07                           # a plain value: fixed for every trial

Every key must name an existing leaf of the resolved config (so ``model.experts.<name>`` only for experts
the config defines) and every value must have the leaf's type; errors name the space file and the key.
``ray.*``, ``tune.*`` and ``mlflow.*`` cannot be swept: they decide resources and tracking of the sweep.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from ray import tune

from etva.config import Config, ConfigError, config_from_dict, config_to_dict, flatten

__all__ = ["Dimension", "SearchSpace", "load_space", "apply_params", "to_tune_space", "SPEC_KINDS"]

SPEC_KINDS = ("grid", "choice", "uniform", "loguniform", "randint", "fixed")
FORBIDDEN_PREFIXES = ("ray.", "tune.", "mlflow.")
VARIANT_KEY = "study.variant"  # a study's sampled value naming a trial's variant (tag etva.sampled, params)


@dataclass(frozen=True)
class Dimension:
    """One swept config path: ``kind`` in SPEC_KINDS; ``values`` (grid/choice/fixed) or ``bounds``."""

    key: str
    kind: str
    values: tuple = ()
    bounds: tuple = ()

    @property
    def finite(self) -> bool:
        return self.kind in ("grid", "choice", "fixed")


@dataclass(frozen=True)
class SearchSpace:
    source: str
    dims: tuple[Dimension, ...]

    @property
    def keys(self) -> list[str]:
        return [d.key for d in self.dims]

    def resolve(self, params: dict[str, Any]) -> dict[str, Any]:
        """A trial's sampled values as config overrides (a study space expands its variant name)."""
        return params

    @property
    def swept(self) -> list[str]:
        """Keys that take more than one value (the columns of summaries and plots)."""
        return [d.key for d in self.dims if d.kind != "fixed" and not (d.finite and len(d.values) < 2)]


def _parse_spec(key: str, spec: Any, source: str) -> Dimension:
    if not isinstance(spec, dict):
        return Dimension(key, "fixed", values=(spec,))
    if len(spec) != 1:
        raise ConfigError(
            f"{source}: key '{key}' expects one spec of {', '.join(SPEC_KINDS)}, got {sorted(spec)}"
        )
    kind, arg = next(iter(spec.items()))
    if kind not in SPEC_KINDS:
        raise ConfigError(f"{source}: key '{key}': unknown spec '{kind}' (expected one of {SPEC_KINDS})")
    if kind in ("grid", "choice"):
        if not isinstance(arg, list) or not arg:
            raise ConfigError(f"{source}: key '{key}': '{kind}' expects a non-empty list of values")
        return Dimension(key, kind, values=tuple(arg))
    if kind == "fixed":
        return Dimension(key, kind, values=(arg,))
    if not (isinstance(arg, list) and len(arg) == 2 and all(_is_number(v) for v in arg)):
        raise ConfigError(f"{source}: key '{key}': '{kind}' expects [low, high] numbers, got {arg!r}")
    lo, hi = arg
    if not lo < hi:
        raise ConfigError(f"{source}: key '{key}': '{kind}' expects low < high, got {arg!r}")
    if kind == "loguniform" and lo <= 0:
        raise ConfigError(f"{source}: key '{key}': 'loguniform' expects low > 0, got {arg!r}")
    if kind == "randint" and not all(isinstance(v, int) for v in arg):
        raise ConfigError(f"{source}: key '{key}': 'randint' expects integer bounds, got {arg!r}")
    return Dimension(key, kind, bounds=(lo, hi))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_against(cfg: Config, dim: Dimension, source: str) -> None:
    leaves = flatten(config_to_dict(cfg))
    if dim.key.startswith(FORBIDDEN_PREFIXES):
        raise ConfigError(
            f"{source}: key '{dim.key}' cannot be swept (ray.*, tune.* and mlflow.* set up the sweep itself)"
        )
    if dim.key not in leaves:
        near = [k for k in leaves if k.rsplit(".", 1)[-1] == dim.key.rsplit(".", 1)[-1]][:5]
        raise ConfigError(
            f"{source}: unknown key '{dim.key}' (not a field of the resolved config"
            + (f"; did you mean one of {near}?)" if near else ")")
        )
    samples = list(dim.values) if dim.values else list(dim.bounds)
    if dim.kind in ("uniform", "loguniform"):  # Tune samples floats: an int field must use randint/grid
        samples = [float(v) for v in samples]
    for value in samples:
        try:
            apply_params(cfg, {dim.key: value}, source)
        except ConfigError as e:
            raise ConfigError(
                f"{source}: key '{dim.key}': value {value!r} does not fit the config: {e}"
            ) from e


def load_space(path: str | Path, cfg: Config) -> SearchSpace:
    """Read and validate a space file against the resolved config ``cfg``."""
    path = Path(path)
    source = str(path.resolve())
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"{source}: cannot read search space ({e.strerror})") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from e
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{source}: a search space is a non-empty mapping of config keys to specs")
    dims = tuple(_parse_spec(str(k), v, source) for k, v in data.items())
    for dim in dims:
        _check_against(cfg, dim, source)
    return SearchSpace(source, dims)


def _plain(v: Any) -> Any:
    """numpy scalars (from Tune samplers) -> Python scalars."""
    return v.item() if hasattr(v, "item") and not isinstance(v, (list, dict, str)) else v


def apply_params(cfg: Config, params: dict[str, Any], source: str = "<trial params>") -> Config:
    """A new config: ``cfg`` with ``{"a.b": value}`` set (types checked by the config schema)."""
    data = config_to_dict(cfg)  # a fresh nested copy
    for key, value in params.items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            if not isinstance(node.get(p), dict):
                raise ConfigError(f"{source}: unknown key '{key}'")
            node = node[p]
        if leaf not in node:
            raise ConfigError(f"{source}: unknown key '{key}'")
        node[leaf] = _plain(value)
    return config_from_dict(data, source)


def to_tune_space(space: SearchSpace, search: str) -> dict[str, Any]:
    """The Tune ``param_space`` (flat keys = config paths).

    ``random``: grid dims are ``grid_search`` (crossed with ``num_samples`` random draws of the rest);
    ``grid``: every dim must be finite, all become ``grid_search``;
    ``optuna``: grid dims become categorical choices (Optuna has no grid).
    """
    out: dict[str, Any] = {}
    for d in space.dims:
        if d.kind == "fixed":
            out[d.key] = d.values[0]
        elif search == "grid":
            if not d.finite:
                raise ConfigError(
                    f"{space.source}: key '{d.key}' is '{d.kind}': tune.search=grid needs grid/choice values"
                )
            out[d.key] = tune.grid_search(list(d.values))
        elif d.kind == "grid" and search != "optuna":
            out[d.key] = tune.grid_search(list(d.values))
        elif d.kind in ("grid", "choice"):
            out[d.key] = tune.choice(list(d.values))
        elif d.kind == "uniform":
            out[d.key] = tune.uniform(*d.bounds)
        elif d.kind == "loguniform":
            out[d.key] = tune.loguniform(*d.bounds)
        elif d.kind == "randint":
            out[d.key] = tune.randint(*d.bounds)
    return out


def trial_params(trial_config: dict[str, Any], space: SearchSpace) -> dict[str, Any]:
    """The space's values out of a Tune trial config (plain Python scalars)."""
    return {k: _plain(trial_config[k]) for k in space.keys if k in trial_config}


def dump_space(space: SearchSpace) -> str:
    """The space as YAML (logged as an artifact of the sweep's parent run)."""
    data = {}
    for d in space.dims:
        if d.kind == "fixed":
            data[d.key] = d.values[0]
        else:
            data[d.key] = {d.kind: list(d.values or d.bounds)}
    return yaml.safe_dump(data, sort_keys=False)
