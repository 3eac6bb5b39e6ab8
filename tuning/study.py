"""An ablation study as a Ray Tune experiment: named variants x seeds, one MLflow parent run holding the answer.

    python -m tuning.study --config ray_jobs/configs/study.yaml --space tuning/spaces/ablations.yaml \
        --name tables45 [--seeds 5] [--variants global_only,shared_centres] [a.b=c ...]
    etva study --space tuning/spaces/ablations.yaml --name tables45        # the same, via the CLI

A study space file names the variants (each a set of config overrides), the reference variant every
other one is compared with, the seeds, and optionally the paper's numbers shown beside ours::

    reference: shared_centres
    seeds: 5                                   # train.seed = 0..4 (or a list: [0, 3, 7])
    variants:
      global_only: {model.alignment: global}
      shared_centres: {model.alignment: both, model.vlad_mode: shared}
    paper: {global_only: 44.3, shared_centres: 51.3}   # reported t2v R@1, for reference only

It runs through the sweep machinery (``tuning.sweep``): a grid over ``study.variant`` x ``train.seed``,
FIFO (every trial gets the same budget, no early stopping), one nested MLflow child run per trial,
resumable by ``--name``. Each trial selects its epoch on a validation split carved from training
(``data.val_from_train``) and then evaluates that checkpoint on ``data.test_split``, logging the test
metrics and its per-query rank counts (``test_ranks.json``). When the trials are done,
``tuning.study_report`` puts the table (mean +- std and 95% interval per variant), the paired comparison
with the reference and the picture into the parent run. ``etva best`` skips study runs unless asked.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from etva.config import Config, ConfigError
from etva.config.settings import REPO
from ray_jobs.driver import (
    add_overrides,
    disable_mlflow_telemetry,
    init_ray,
    job_parser,
    load_job_config,
    setup_logging,
    storage_path,
)
from ray_jobs.prepare import ensure_dataset
from ray_jobs.run_record import captured_log, upload_log
from tuning.mlflow_sweep import close_unfinished
from tuning.space import VARIANT_KEY, Dimension, SearchSpace, apply_params
from tuning.study_report import report_study
from tuning.sweep import _prepare_once, _tracking, build_tuner

logger = logging.getLogger("etva.study")

STUDY_TAG = "etva.study"  # on the parent run: the study's name
DEFAULT_SPACE = "tuning/spaces/ablations.yaml"
DEFAULT_CONFIG = "ray_jobs/configs/study.yaml"


@dataclass(frozen=True)
class StudySpace(SearchSpace):
    """A search space of ``study.variant`` x ``train.seed`` whose variants expand to config overrides."""

    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    reference: str = ""
    paper: dict[str, float] = field(default_factory=dict)

    def resolve(self, params: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in params.items() if k != VARIANT_KEY}
        if VARIANT_KEY in params:
            out.update(self.variants[params[VARIANT_KEY]])
        return out

    @property
    def seeds(self) -> list[int]:
        return list(self.dims[1].values)


def _fail(source: str, what: str) -> ConfigError:
    return ConfigError(f"{source}: {what}")


def _seeds(data: dict, source: str, seeds: int | None) -> list[int]:
    raw = seeds if seeds is not None else data.get("seeds", 5)
    if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 1:
        return list(range(raw))
    if isinstance(raw, list) and raw and all(isinstance(s, int) and s >= 0 for s in raw):
        return list(raw)
    raise _fail(source, f"'seeds' expects a count >= 1 or a list of seeds >= 0, got {raw!r}")


def _variants(data: dict, source: str, only: list[str] | None) -> dict[str, dict[str, Any]]:
    variants = data.get("variants")
    if not isinstance(variants, dict) or len(variants) < 2:
        raise _fail(source, "'variants' expects a mapping of at least two names to config overrides")
    for name, overrides in variants.items():
        if not isinstance(overrides, dict):
            raise _fail(source, f"variant '{name}' expects a mapping of config keys to values")
    if only:
        unknown = [v for v in only if v not in variants]
        if unknown:
            raise _fail(source, f"--variants: unknown {unknown} (the file defines {list(variants)})")
        variants = {k: variants[k] for k in only}
    return {str(k): dict(v) for k, v in variants.items()}


def load_study(
    path: str | Path, cfg: Config, seeds: int | None = None, only: list[str] | None = None
) -> StudySpace:
    """Read and validate a study space file against the resolved config ``cfg``.

    ``seeds`` (a count) and ``only`` (variant names) override the file's seeds and variant list.
    Errors name the file and the key.
    """
    path = Path(path)
    source = str(path.resolve())
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise _fail(source, f"cannot read study space ({e.strerror})") from e
    except yaml.YAMLError as e:
        raise _fail(source, f"not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise _fail(source, "a study space is a mapping with 'variants', 'reference' and 'seeds'")
    extra = set(data) - {"variants", "reference", "seeds", "paper"}
    if extra:
        raise _fail(source, f"unknown keys {sorted(extra)} (expected variants, reference, seeds, paper)")
    variants = _variants(data, source, only)
    reference = data.get("reference", "")
    if reference not in variants:
        raise _fail(source, f"'reference' = {reference!r} is not one of the variants {list(variants)}")
    for name, overrides in variants.items():
        if "train.seed" in overrides or any(k.startswith(("ray.", "tune.", "mlflow.")) for k in overrides):
            raise _fail(source, f"variant '{name}': seeds, ray.*, tune.* and mlflow.* are set by the study")
        apply_params(cfg, overrides, f"{source} (variant '{name}')")  # unknown keys / bad values raise
    paper = data.get("paper") or {}
    if not isinstance(paper, dict) or not all(isinstance(v, (int, float)) for v in paper.values()):
        raise _fail(source, "'paper' expects a mapping of variant names to numbers")
    dims = (Dimension(VARIANT_KEY, "grid", tuple(variants)), Dimension("train.seed", "grid", tuple(_seeds(data, source, seeds))))
    return StudySpace(source, dims, variants, reference, {str(k): float(v) for k, v in paper.items()})


def check_config(cfg: Config) -> None:
    """A study selects on a split carved from training and reports a separate test split."""
    if cfg.data.val_from_train <= 0:
        raise ConfigError(
            "a study selects each trial's epoch on a validation split carved from training: "
            "set data.val_from_train (e.g. 60), as ray_jobs/configs/study.yaml does"
        )
    if not cfg.data.test_split:
        raise ConfigError("a study reports the test split: set data.test_split (e.g. test)")


def study_config(cfg: Config) -> Config:
    """The sweep settings of a study: a full grid, FIFO (same budget for every trial), one sample."""
    check_config(cfg)
    cfg.tune.search, cfg.tune.scheduler, cfg.tune.num_samples = "grid", "fifo", 1
    cfg.tune.max_epochs = cfg.train.epochs
    return cfg


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = job_parser("python -m tuning.study", __doc__.split("\n\n")[0])
    p.set_defaults(config=str(REPO / DEFAULT_CONFIG))
    p.add_argument("--space", default=str(REPO / DEFAULT_SPACE), help="study space YAML (variants, seeds)")
    p.add_argument("--name", default="", help="stable study name: re-running with it resumes the study")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the file's)")
    p.add_argument("--variants", default="", help="comma-separated subset of the file's variants")
    p.add_argument("--restart-errored", action="store_true", help="on resume, rerun errored trials")
    add_overrides(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    disable_mlflow_telemetry()
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")  # as tuning.sweep: resume never reruns a trial
    args = parse_args(argv)
    with (
        tempfile.TemporaryDirectory() as tmp,
        captured_log(Path(tmp) / f"study-{time.strftime('%Y%m%d-%H%M%S')}.log") as log,
    ):
        return _study(args, log)


def _study(args: argparse.Namespace, log: Path) -> int:
    """Parent run, Tune over variants x seeds, then the study report into the parent run."""
    cfg = study_config(load_job_config(args.config, args.overrides))
    only = [v.strip() for v in args.variants.split(",") if v.strip()] or None
    space = load_study(args.space, cfg, args.seeds, only)
    name = args.name or cfg.ray.run_name or f"study-{Path(space.source).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    ensure_dataset(cfg.data)  # once here: concurrent trials must not race to generate it
    init_ray(cfg.ray.address)
    tracking = _tracking(cfg, name, space, args)
    client, _, exp_id, parent_id = tracking
    if client is None:
        raise ConfigError("a study needs an MLflow tracking server (mlflow.tracking_uri or $MLFLOW_TRACKING_URI)")
    client.set_tag(parent_id, STUDY_TAG, name)
    t0, status = time.time(), "FAILED"
    try:  # every variant and seed trains on the same data: prepared once here (tokenizer, decoded clips)
        storage = storage_path(cfg)
        shared = _prepare_once(cfg, name, storage, client, parent_id)
        results = build_tuner(cfg, space, name, storage, tracking, args.restart_errored, shared).fit()
        done = results.num_terminated + results.num_errors
        status = "FAILED" if results.num_errors else ("FINISHED" if done == len(results) else "KILLED")
    finally:
        close_unfinished(client, exp_id, parent_id)
        text = report_study(client, exp_id, parent_id, space, cfg.data.test_split, name, time.time() - t0)
        print(text)
        upload_log(client, parent_id, log)
        client.set_terminated(parent_id, status=status)
    return 0 if status == "FINISHED" else 1


if __name__ == "__main__":
    sys.exit(main())
