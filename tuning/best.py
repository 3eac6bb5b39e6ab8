"""Pick the best checkpoint of an MLflow experiment and register it as the ``champion``.

    etva best --experiment etva-shapes [--model-name etva-shapes] [--top 10] [--tracking-uri http://...]

Best = highest ``best/t2v_R1`` over every run of the experiment that logged a checkpoint (training runs
and nested sweep trials alike), ties broken by lower ``best/t2v_MdR``, then by the earlier run. The run's
``checkpoint`` artifact becomes a new version of the registered model and gets the alias ``champion``;
``download_champion("models:/<name>@champion", dst)`` brings it back as a local checkpoint directory.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from etva.metrics import HEADLINE_METRICS, selection_key
from ray_jobs.tracking import CHECKPOINT_TAG, get_client
from ray_jobs.tracking import download_checkpoint as _download

logger = logging.getLogger(__name__)

METRIC = "best/t2v_R1"
TIE_METRIC = "best/t2v_MdR"
ALIAS = "champion"
TABLE_METRICS = tuple(f"best/{k}" for k in HEADLINE_METRICS)


class BestError(ValueError):
    """Nothing to pick (no experiment, no run with a checkpoint) or no tracking server."""


@dataclass
class Pick:
    ranked: list  # mlflow Run objects, best first
    model_name: str
    version: str  # registered model version of ranked[0]
    uri: str  # models:/<name>@champion


def _client(tracking_uri: str):
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        raise BestError("no MLflow tracking server: pass --tracking-uri or set MLFLOW_TRACKING_URI")
    return get_client(uri), uri


def _sort_key(run) -> tuple[float, float, int]:
    """The project's selection rule on the run's ``best/`` metrics; equal runs: the earlier first."""
    r1, neg_mdr = selection_key(run.data.metrics, prefix="best/")
    return (-r1, -neg_mdr, run.info.start_time or 0)


def rank_runs(client, experiment: str) -> list:
    """Every run of ``experiment`` (nested ones included) with a checkpoint and ``best/t2v_R1``, best first."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise BestError(f"MLflow experiment '{experiment}' does not exist")
    runs, token = [], None
    while True:
        page = client.search_runs(
            [exp.experiment_id],
            filter_string=f"metrics.`{METRIC}` >= 0",
            order_by=[f"metrics.`{METRIC}` DESC", f"metrics.`{TIE_METRIC}` ASC"],
            max_results=1000,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            break
    runs = [r for r in runs if r.data.tags.get(CHECKPOINT_TAG) and not math.isnan(r.data.metrics[METRIC])]
    return sorted(runs, key=_sort_key)


def register(client, run, model_name: str) -> str:
    """Register ``runs:/<run>/checkpoint`` as a new version of ``model_name``, alias it champion."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(model_name)
    except MlflowException:
        client.create_registered_model(
            model_name, description="ETVA checkpoints picked by `etva best` (best val t2v R@1, ties by MdR)"
        )
    artifact = run.data.tags.get(CHECKPOINT_TAG, "checkpoint")
    version = client.create_model_version(
        model_name,
        source=f"runs:/{run.info.run_id}/{artifact}",
        run_id=run.info.run_id,
        tags={k: str(v) for k, v in run.data.metrics.items() if k in TABLE_METRICS},
    )
    client.set_registered_model_alias(model_name, ALIAS, version.version)
    return str(version.version)


def pick_best(experiment: str, model_name: str = "", tracking_uri: str = "") -> Pick:
    """Rank the experiment's runs, register the best one's checkpoint and alias it ``champion``."""
    client, _ = _client(tracking_uri)
    ranked = rank_runs(client, experiment)
    if not ranked:
        raise BestError(
            f"experiment '{experiment}': no run has a checkpoint artifact and a '{METRIC}' metric yet"
        )
    name = model_name or experiment
    version = register(client, ranked[0], name)
    return Pick(ranked, name, version, f"models:/{name}@{ALIAS}")


def format_table(runs: list, top: int = 10) -> str:
    cols = ("rank", "run", "parent", *(m.removeprefix("best/") for m in TABLE_METRICS), "run_id")
    rows: list[list[Any]] = []
    for i, run in enumerate(runs[:top]):
        m = run.data.metrics
        parent = run.data.tags.get("mlflow.parentRunId", "")[:8] or "-"
        vals = [f"{m.get(k, math.nan):.2f}" for k in TABLE_METRICS]
        rows.append([i + 1, run.info.run_name or "-", parent, *vals, run.info.run_id])
    widths = [max(len(str(c)), *(len(str(r[j])) for r in rows)) for j, c in enumerate(cols)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def download_champion(uri: str, dst: str | Path, tracking_uri: str = "") -> Path:
    """Download ``models:/<name>@champion`` (or any artifact URI) into ``dst``: the local, verified
    checkpoint directory (see ``ray_jobs.tracking.download_checkpoint``)."""
    _, turi = _client(tracking_uri)
    try:
        return _download(uri, dst, turi)
    except LookupError as e:
        raise BestError(str(e)) from e


def main(experiment: str, model_name: str = "", top: int = 10, tracking_uri: str = "") -> int:
    """`etva best`: print the top runs, register the best, print its models:/ URI."""
    pick = pick_best(experiment, model_name, tracking_uri)
    print(
        f"experiment '{experiment}': {len(pick.ranked)} runs with a checkpoint; top {min(top, len(pick.ranked))}:"
    )
    print(format_table(pick.ranked, top))
    best = pick.ranked[0]
    print(
        f"\nregistered run {best.info.run_id} ({best.info.run_name}) as {pick.model_name} "
        f"version {pick.version}, alias '{ALIAS}': {pick.uri}"
    )
    return 0
