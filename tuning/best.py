"""Pick the best checkpoint of an MLflow experiment and register it as the ``champion``.

    etva best --experiment etva-shapes [--model-name etva-shapes] [--top 10] [--tracking-uri http://...]
    etva best --experiment etva-shapes --dry-run          # the ranking only, nothing registered
    etva best --run-id <run id> [--model-name etva-shapes]  # register this run instead of the top one

Best = highest ``best/t2v_R1`` over every run of the experiment that logged a model (training runs and
nested sweep trials alike; trials of ablation studies only with ``--include-studies``), ties broken by lower ``best/t2v_MdR``, then by the earlier run. The run's
logged model (``models:/<model id>``, see ``ray_jobs.tracking.log_best_model``) is registered exactly as
the UI's *Register model* button does it (source ``models:/<model id>``, run id, model id), so versions
from the browser and from here are the same kind; a run that already has a version of the registered
model reuses it. The version gets the alias ``champion``; ``mlflow.pyfunc.load_model`` loads it, and
``ray_jobs.tracking.download_checkpoint("models:/<name>@champion", dst, uri)`` brings back its local
checkpoint directory (what ``etva eval --checkpoint models:/...`` calls).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from etva.config.settings import tracking_uri
from etva.eval.metrics import HEADLINE_METRICS, SELECTION_METRIC, ranking_order_by, selection_key
from ray_jobs.tracking import MODEL_ID_TAG, get_client

logger = logging.getLogger(__name__)

METRIC = f"best/{SELECTION_METRIC}"  # a run without it has no result to rank
ALIAS = "champion"
TABLE_METRICS = tuple(f"best/{k}" for k in HEADLINE_METRICS)


class BestError(ValueError):
    """Nothing to pick (no experiment, no run with a checkpoint) or no tracking server."""


@dataclass
class Pick:
    experiment: str
    ranked: list  # mlflow Run objects, best first
    chosen: Any  # the run registered (ranked[0], or the --run-id run); None on a dry run
    model_name: str
    version: str  # registered model version of ``chosen`` ("" on a dry run)
    reused: bool  # the run already had that version
    uri: str  # models:/<name>@champion ("" on a dry run)


def _client(given_uri: str):
    uri = tracking_uri(given_uri)
    if not uri:
        raise BestError("no MLflow tracking server: pass --tracking-uri or set MLFLOW_TRACKING_URI")
    return get_client(uri), uri


def _sort_key(run) -> tuple[float, float, int]:
    """The project's selection rule on the run's ``best/`` metrics; equal runs: the earlier first."""
    r1, neg_mdr = selection_key(run.data.metrics, prefix="best/")
    return (-r1, -neg_mdr, run.info.start_time or 0)


def is_study_trial(run) -> bool:
    """A trial of an ablation study (``tuning.study``): a variant's seed, not a model to deploy."""
    return '"study.variant"' in run.data.tags.get("etva.sampled", "")


def rank_runs(client, experiment: str, include_studies: bool = False) -> list:
    """Every run of ``experiment`` (nested ones included) with a checkpoint and ``best/t2v_R1``, best first;
    trials of ablation studies only with ``include_studies``."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise BestError(f"MLflow experiment '{experiment}' does not exist")
    runs, token = [], None
    while True:
        page = client.search_runs(
            [exp.experiment_id],
            filter_string=f"metrics.`{METRIC}` >= 0",
            order_by=ranking_order_by("best/"),
            max_results=1000,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            break
    runs = [r for r in runs if r.data.tags.get(MODEL_ID_TAG) and not math.isnan(r.data.metrics[METRIC])]
    if not include_studies:
        runs = [r for r in runs if not is_study_trial(r)]
    return sorted(runs, key=_sort_key)


def _ensure_registered_model(client, model_name: str) -> None:
    # lazy: mlflow takes 2.5 s CPU to import; a process without a tracking server never pays it
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(model_name)
    except MlflowException:
        client.create_registered_model(
            model_name,
            description="ETVA checkpoints (pyfunc models): `etva best` or Register model in the UI",
        )


def existing_version(client, model_name: str, run_id: str, model_id: str):
    """The version of ``model_name`` already made from this run's logged model (UI or CLI), or None."""
    found = client.search_model_versions(f"name = '{model_name}' and run_id = '{run_id}'")
    same = [v for v in found if v.model_id == model_id or v.source == f"models:/{model_id}"]
    return min(same, key=lambda v: int(v.version)) if same else None


def register(client, run, model_name: str) -> tuple[str, bool]:
    """Register the run's logged model as a version of ``model_name`` (as the UI does: source
    ``models:/<model id>``), or reuse the version it already has; alias it champion.
    Returns (version, reused)."""
    model_id = run.data.tags.get(MODEL_ID_TAG, "")
    if not model_id:
        raise BestError(f"run {run.info.run_id} has no logged model (tag {MODEL_ID_TAG}): it did not finish")
    _ensure_registered_model(client, model_name)
    mv = existing_version(client, model_name, run.info.run_id, model_id)
    reused = mv is not None
    if mv is None:
        mv = client.create_model_version(
            model_name,
            source=f"models:/{model_id}",
            run_id=run.info.run_id,
            tags={k: str(v) for k, v in run.data.metrics.items() if k in TABLE_METRICS},
            model_id=model_id,
        )
    client.set_registered_model_alias(model_name, ALIAS, mv.version)
    return str(mv.version), reused


def _run_by_id(client, run_id: str):
    # lazy: mlflow takes 2.5 s CPU to import; a process without a tracking server never pays it
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as e:
        raise BestError(f"--run-id {run_id}: no such MLflow run ({str(e).splitlines()[0]})") from e


def pick_best(
    experiment: str,
    model_name: str = "",
    tracking_uri: str = "",
    run_id: str = "",
    dry_run: bool = False,
    include_studies: bool = False,
) -> Pick:
    """Rank the experiment's runs; register the best one (or ``run_id``) and alias it ``champion``
    unless ``dry_run``."""
    client, _ = _client(tracking_uri)
    chosen = _run_by_id(client, run_id) if run_id else None
    if chosen is not None and not experiment:
        experiment = client.get_experiment(chosen.info.experiment_id).name
    ranked = rank_runs(client, experiment, include_studies)
    if chosen is None and not ranked:
        raise BestError(f"experiment '{experiment}': no run has a logged model and a '{METRIC}' metric yet")
    name = model_name or experiment
    if dry_run:
        return Pick(experiment, ranked, None, name, "", False, "")
    chosen = chosen or ranked[0]
    version, reused = register(client, chosen, name)
    return Pick(experiment, ranked, chosen, name, version, reused, f"models:/{name}@{ALIAS}")


def format_ranking(runs: list, top: int = 10) -> str:
    """The ranked runs as aligned columns: rank, run, parent run, the headline `best/` metrics, run id."""
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


def main(
    experiment: str,
    model_name: str = "",
    top: int = 10,
    tracking_uri: str = "",
    run_id: str = "",
    dry_run: bool = False,
    include_studies: bool = False,
) -> int:
    """`etva best`: print the top runs; register the best (or ``run_id``), print its models:/ URI."""
    pick = pick_best(experiment, model_name, tracking_uri, run_id, dry_run, include_studies)
    n = len(pick.ranked)
    print(f"experiment '{pick.experiment}': {n} runs with a model; top {min(top, n)}:")
    print(format_ranking(pick.ranked, top))
    if dry_run:
        print("\ndry run: nothing registered")
        return 0
    run = pick.chosen
    how = "already registered as" if pick.reused else "registered as"
    print(
        f"\nrun {run.info.run_id} ({run.info.run_name}) {how} {pick.model_name} version {pick.version}, "
        f"alias '{ALIAS}': {pick.uri}"
    )
    return 0
