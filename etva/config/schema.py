"""Type, choice and range checking for dataclass trees built from plain dicts (YAML).

A field typed ``Literal[...]`` accepts only its choices (plus the schema's aliases, case-insensitively);
a field with a :class:`Range` in the schema accepts only values inside it. Every error names the key,
the value, what was expected and the source (file) the value came from.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

__all__ = ["ConfigError", "Range", "Schema", "POSITIVE", "AT_LEAST_1", "NON_NEGATIVE", "FRACTION"]


# keys that no longer exist, with what to do instead (a clearer error than "unknown key")
RETIRED = {
    "data.features_dir": "convert the .npy folder once with `etva data import-features <folder> --out "
    "<store>` and set data.feature_store to <store> (docs/features.md)",
}


class ConfigError(ValueError):
    """A config key is unknown, has the wrong type, a value outside its choices/range, or a file is unreadable."""


@dataclass(frozen=True)
class Range:
    """Allowed interval of a numeric field: ``low <= v`` (``low < v`` if ``open_low``) and ``v <= high``."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False

    def contains(self, v: float) -> bool:
        if self.low is not None and (v <= self.low if self.open_low else v < self.low):
            return False
        return self.high is None or v <= self.high

    def describe(self) -> str:
        low = "" if self.low is None else f"{'>' if self.open_low else '>='} {self.low:g}"
        high = "" if self.high is None else f"<= {self.high:g}"
        return " and ".join(p for p in (low, high) if p)


POSITIVE = Range(0, None, open_low=True)  # > 0
AT_LEAST_1 = Range(1)
NON_NEGATIVE = Range(0)
FRACTION = Range(0, 1)  # [0, 1]


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


@dataclass(frozen=True)
class Schema:
    """Checks for one dataclass tree: ``ranges[cls][field]`` and ``aliases[LiteralType][spelling]``."""

    ranges: Mapping[type, Mapping[str, Range]] = field(default_factory=dict)
    aliases: Mapping[Any, Mapping[str, str]] = field(default_factory=dict)

    def choice(self, value: Any, tp: Any, key: str, source: str) -> str:
        """``value`` as one of the choices of the Literal ``tp`` (aliases map to their canonical choice)."""
        choices = typing.get_args(tp)
        if value in choices:
            return value
        if isinstance(value, str) and tp in self.aliases:
            spellings = {c.lower(): c for c in choices} | self.aliases[tp]
            if value.strip().lower() in spellings:
                return spellings[value.strip().lower()]
        raise ConfigError(f"{source}: key '{key}' = {value!r} is not one of: {', '.join(choices)}")

    def convert(self, value: Any, tp: Any, key: str, source: str) -> Any:
        """Check/convert ``value`` to type ``tp``; raise ConfigError naming ``key`` and ``source``."""
        origin = typing.get_origin(tp)
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: key '{key}' expects a mapping, got {type(value).__name__}")
            return self.build(tp, value, key, source)
        if origin is dict:
            _, vtp = typing.get_args(tp)
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: key '{key}' expects a mapping, got {type(value).__name__}")
            return {str(k): self.convert(v, vtp, f"{key}.{k}", source) for k, v in value.items()}
        if origin is list:
            (etp,) = typing.get_args(tp)
            if not isinstance(value, list):
                raise ConfigError(f"{source}: key '{key}' expects a list, got {type(value).__name__}")
            return [self.convert(v, etp, f"{key}[{i}]", source) for i, v in enumerate(value)]
        if origin is Literal:
            return self.choice(value, tp, key, source)
        if origin in (typing.Union, types.UnionType):
            args = typing.get_args(tp)
            if value is None and type(None) in args:
                return None
            inner = [a for a in args if a is not type(None)]
            return self.convert(value, inner[0], key, source)
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

    def build(self, cls: type, data: dict, prefix: str, source: str) -> Any:
        """An instance of the dataclass ``cls`` from ``data``, every key checked (``prefix``: its path)."""
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in data.items():
            full = f"{prefix}.{key}" if prefix else str(key)
            if full in RETIRED:
                if value in ("", None):  # written unset by older versions (e.g. a checkpoint's config)
                    continue
                raise ConfigError(f"{source}: key '{full}' was retired: {RETIRED[full]}")
            if key not in names:
                raise ConfigError(
                    f"{source}: unknown key '{full}' (known keys under '{prefix or '<top>'}': "
                    f"{', '.join(sorted(names))})"
                )
            kwargs[key] = self.convert(value, hints[key], full, source)
            bounds = self.ranges.get(cls, {}).get(key)
            if bounds is not None and not bounds.contains(kwargs[key]):
                raise ConfigError(
                    f"{source}: key '{full}' = {kwargs[key]!r} is out of range (expected {bounds.describe()})"
                )
        return cls(**kwargs)


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


def merge_dicts(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_dicts(out[k], v)
        else:
            out[k] = v
    return out


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Apply ``a.b=c`` overrides (values parsed as YAML scalars) to a nested dict."""
    data = merge_dicts({}, data)
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
