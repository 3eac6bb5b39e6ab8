"""The one MLflow helper module of the job layer: client, experiment, runs, params, metrics, artifacts.

Every process talks to the tracking server over HTTP (``mlflow.tracking_uri`` or ``$MLFLOW_TRACKING_URI``).
The driver creates (or, for a resumed job, finds again by its run-name tag) the run; rank 0 of the
Train workers logs per-epoch metrics into it with :class:`EpochLogger`; sweeps (``tuning.mlflow_sweep``)
nest trial runs under a parent with the same helpers.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from etva.config import Config, config_to_dict, flatten

logger = logging.getLogger(__name__)

RUN_NAME_TAG = "etva.run_name"
CHECKPOINT_TAG = "etva.checkpoint_artifact"  # artifact folder of the run's best checkpoint
MAX_PARAM_LEN = 6000
PARAMS_PER_CALL, METRICS_PER_CALL = 90, 900  # below the server's log_batch limits (100 / 1000)


def tracking_uri(cfg: Config) -> str:
    """The tracking server's http(s) address ("" = not tracking); a file/sqlite URI is refused."""
    uri = cfg.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri and not uri.startswith(("http://", "https://", "databricks")):
        raise ValueError(
            f"mlflow.tracking_uri={uri!r}: use the http:// address of a tracking server "
            "(workers run in other folders and processes; start one with `bash cluster/start_local.sh`)"
        )
    return uri


def get_client(uri: str):
    """An ``MlflowClient`` for tracking and the model registry on ``uri``."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(client, name: str) -> str:
    """The id of experiment ``name``, created when it does not exist."""
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp else client.create_experiment(name)


def find_run(client, exp_id: str, filter_string: str):
    """The first run of ``exp_id`` matching ``filter_string``, or None."""
    found = client.search_runs([exp_id], filter_string=filter_string, max_results=2)
    return found[0] if found else None


def run_url(uri: str, exp_id: str, run_id: str) -> str:
    """The run's page in the MLflow UI."""
    return f"{uri.rstrip('/')}/#/experiments/{exp_id}/runs/{run_id}"


def git_commit() -> str:
    """The repository's commit (``$ETVA_GIT_COMMIT`` when set, e.g. inside a container)."""
    if os.environ.get("ETVA_GIT_COMMIT"):
        return os.environ["ETVA_GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )  # fmt: skip
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def job_submission_id() -> str:
    """The Ray job submission id when running under `ray job submit` (else "")."""
    try:
        meta = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")).get("metadata", {})
    except json.JSONDecodeError:
        return ""
    return meta.get("job_submission_id", "") or os.environ.get("RAY_JOB_SUBMISSION_ID", "")


def _param(v: Any) -> str:
    s = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
    return s[:MAX_PARAM_LEN]


def log_params(client, run_id: str, params: Mapping[str, Any]) -> None:
    """Log params in batches (lists/dicts as JSON, long values cut to the server's limit)."""
    from mlflow.entities import Param

    items = [Param(k, _param(v)) for k, v in params.items()]
    for s in range(0, len(items), PARAMS_PER_CALL):
        client.log_batch(run_id, params=items[s : s + PARAMS_PER_CALL])


def config_params(cfg: Config) -> dict[str, Any]:
    """The resolved config flattened to ``section.key`` params (the same keys for every run)."""
    return flatten(config_to_dict(cfg))


def log_metrics(client, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
    """Log finite numeric metrics at ``step`` in batches."""
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    items = [
        Metric(k, float(v), ts, step)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and math.isfinite(float(v))
    ]
    for s in range(0, len(items), METRICS_PER_CALL):
        client.log_batch(run_id, metrics=items[s : s + METRICS_PER_CALL])


def log_text(client, run_id: str, text: str, name: str) -> None:
    """Upload ``text`` as the artifact file ``name``."""
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / name
        p.write_text(text)
        client.log_artifact(run_id, str(p))


def log_dict(client, run_id: str, data: dict, name: str) -> None:
    """Upload ``data`` as a JSON artifact file ``name``."""
    log_text(client, run_id, json.dumps(data, indent=2, sort_keys=True, default=str), name)


def resume_run(client, run_id: str) -> None:
    client.update_run(run_id, status="RUNNING")
    client.set_tag(run_id, "etva.resumed", "true")


def start_or_resume_run(cfg: Config, run_name: str, tags: dict[str, str]) -> tuple[Any, str]:
    """Create the MLflow run for ``run_name``, or find the existing one so a resumed job continues it.

    Returns (client, run_id); (None, "") when no tracking server is configured.
    """
    uri = tracking_uri(cfg)
    if not uri:
        logger.warning("no MLflow tracking URI (mlflow.tracking_uri / $MLFLOW_TRACKING_URI): not tracking")
        return None, ""
    client = get_client(uri)
    exp_id = experiment_id(client, cfg.mlflow.experiment)
    found = find_run(client, exp_id, f"tags.`{RUN_NAME_TAG}` = '{run_name}'")
    if found is not None:
        run_id = found.info.run_id
        resume_run(client, run_id)
        logger.info("resuming MLflow run %s (%s)", run_id, run_name)
    else:
        run_id = client.create_run(exp_id, run_name=run_name, tags={RUN_NAME_TAG: run_name}).info.run_id
        log_params(client, run_id, config_params(cfg))
    for k, v in tags.items():
        client.set_tag(run_id, k, v)
    return client, run_id


def finish_run(
    client, run_id: str, best: dict[str, float] | None, best_ckpt_dir: str | None, status: str
) -> None:
    """Log ``best/...`` metrics and the best checkpoint, then mark the run finished."""
    if client is None:
        return
    if best:
        log_metrics(
            client,
            run_id,
            {f"best/{k.removeprefix('val/')}": v for k, v in best.items() if k.startswith("val/")},
        )
    if best_ckpt_dir:
        client.log_artifacts(run_id, best_ckpt_dir, artifact_path="checkpoint")
        client.set_tag(run_id, CHECKPOINT_TAG, "checkpoint")
    client.set_terminated(run_id, status=status)


def resolve_model_uri(client, uri: str) -> str:
    """``models:/<name>@<alias>`` or ``models:/<name>/<version>`` -> the version's artifact location."""
    from mlflow.exceptions import MlflowException

    body = uri.removeprefix("models:/").strip("/")
    try:
        if "@" in body:
            name, alias = body.split("@", 1)
            mv = client.get_model_version_by_alias(name, alias)
        else:
            name, version = body.rsplit("/", 1)
            mv = client.get_model_version(name, version)
    except (MlflowException, ValueError) as e:
        raise LookupError(f"{uri}: no such registered model version ({e})") from e
    return client.get_model_version_download_uri(mv.name, mv.version)


def download_checkpoint(uri: str, dst: str | Path, tracking_uri: str) -> Path:
    """Download ``models:/<name>@<alias>``, ``runs:/...`` (or any artifact URI) into ``dst``; returns
    the local checkpoint directory (the folder holding the checkpoint's MANIFEST.json), verified.
    Raises LookupError when there is no such version or no single checkpoint in it.

    ``models:/`` URIs are resolved with a client bound to the tracking server: mlflow 3.17's
    ``download_artifacts(models:/..., registry_uri=...)`` ignores ``registry_uri`` and asks the global
    default registry (``$MLFLOW_TRACKING_URI``, else a local ``sqlite:///mlflow.db``).
    """
    import mlflow.artifacts

    from etva.checkpoint import MANIFEST, verify_checkpoint

    client = get_client(tracking_uri)
    source = resolve_model_uri(client, uri) if uri.startswith("models:/") else uri
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    local = Path(
        mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dst), tracking_uri=tracking_uri)
    )
    found = [local] if (local / MANIFEST).exists() else sorted(p.parent for p in local.rglob(MANIFEST))
    if len(found) != 1:
        raise LookupError(
            f"{uri}: expected one checkpoint (a folder with {MANIFEST}) in {local}, found {found}"
        )
    verify_checkpoint(found[0])
    return found[0]


class EpochLogger:
    """Rank 0's per-epoch metrics into the run the driver created (a no-op without a run)."""

    def __init__(self, uri: str, run_id: str) -> None:
        self.client = get_client(uri) if uri and run_id else None
        self.run_id = run_id

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        if self.client is not None:
            log_metrics(self.client, self.run_id, metrics, step)

    def backfill(self, history: dict[str, dict], key: str = "val/t2v_R1") -> None:
        """Log epochs that the checkpoint holds but MLflow lacks (the job stopped between the two)."""
        if self.client is None:
            return
        logged = {m.step for m in self.client.get_metric_history(self.run_id, key)}
        for epoch, metrics in sorted(history.items(), key=lambda kv: int(kv[0])):
            if int(epoch) not in logged:
                self.log({k: v for k, v in metrics.items() if k != "epoch"}, step=int(epoch))
