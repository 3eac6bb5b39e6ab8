"""MLflow glue for the driver: one run per training (resumed by run name), params, tags, summaries.

Every process talks to the tracking server over HTTP (``mlflow.tracking_uri`` or ``$MLFLOW_TRACKING_URI``);
workers log only from rank 0 (see ``ray_jobs.worker``).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from etva.config import Config, config_to_dict, flatten

logger = logging.getLogger(__name__)

RUN_NAME_TAG = "etva.run_name"
MAX_PARAM_LEN = 6000


def tracking_uri(cfg: Config) -> str:
    uri = cfg.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri and not uri.startswith(("http://", "https://", "databricks")):
        raise ValueError(
            f"mlflow.tracking_uri={uri!r}: use the http:// address of a tracking server "
            "(workers run in other folders and processes; start one with `bash cluster/start_local.sh`)"
        )
    return uri


def git_commit() -> str:
    if os.environ.get("ETVA_GIT_COMMIT"):
        return os.environ["ETVA_GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
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


def start_or_resume_run(cfg: Config, run_name: str, tags: dict[str, str]) -> tuple[Any, str]:
    """Create the MLflow run for ``run_name``, or find the existing one so a resumed job continues it.

    Returns (client, run_id); (None, "") when no tracking server is configured.
    """
    uri = tracking_uri(cfg)
    if not uri:
        logger.warning("no MLflow tracking URI (mlflow.tracking_uri / $MLFLOW_TRACKING_URI): not tracking")
        return None, ""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(cfg.mlflow.experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(cfg.mlflow.experiment)
    found = client.search_runs([exp_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'", max_results=1)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        client.set_tag(run_id, "etva.resumed", "true")
        logger.info("resuming MLflow run %s (%s)", run_id, run_name)
    else:
        run = client.create_run(exp_id, run_name=run_name, tags={RUN_NAME_TAG: run_name})
        run_id = run.info.run_id
        params = {k: _param(v) for k, v in flatten(config_to_dict(cfg)).items()}
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for s in range(0, len(items), 90):
            client.log_batch(run_id, params=items[s : s + 90])
    for k, v in tags.items():
        client.set_tag(run_id, k, v)
    return client, run_id


def _param(v: Any) -> str:
    s = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
    return s[:MAX_PARAM_LEN]


def log_text(client, run_id: str, text: str, name: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / name
        p.write_text(text)
        client.log_artifact(run_id, str(p))


def log_dict(client, run_id: str, data: dict, name: str) -> None:
    log_text(client, run_id, json.dumps(data, indent=2, sort_keys=True, default=str), name)


def finish_run(
    client, run_id: str, best: dict[str, float] | None, best_ckpt_dir: str | None, status: str
) -> None:
    """Log ``best/...`` metrics and the best checkpoint, then mark the run finished."""
    if client is None:
        return
    from mlflow.entities import Metric

    if best:
        import time

        ts = int(time.time() * 1000)
        items = [
            Metric(f"best/{k.removeprefix('val/')}", float(v), ts, 0)
            for k, v in best.items()
            if isinstance(v, (int, float)) and k.startswith("val/")
        ]
        client.log_batch(run_id, metrics=items)
    if best_ckpt_dir:
        client.log_artifacts(run_id, best_ckpt_dir, artifact_path="checkpoint")
        client.set_tag(run_id, "etva.checkpoint_artifact", "checkpoint")
    client.set_terminated(run_id, status=status)
