"""The one MLflow helper module of the job layer: client, experiment, runs, params, metrics, artifacts.

Every process talks to the tracking server over HTTP (``mlflow.tracking_uri`` or ``$MLFLOW_TRACKING_URI``).
The driver creates (or, for a resumed job, finds again by its run-name tag) the run; rank 0 of the
Train workers logs per-epoch metrics into it with :class:`EpochLogger`; sweeps (``tuning.mlflow_sweep``)
nest trial runs under a parent with the same helpers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import etva
from etva.config import Config, config_to_dict, flatten, settings
from etva.train.checkpoint import MANIFEST, verify_checkpoint
from ray_jobs.credentials import load_credentials

logger = logging.getLogger(__name__)

RUN_NAME_TAG = "etva.run_name"
CHECKPOINT_TAG = "etva.checkpoint_artifact"  # where the run's best checkpoint is: models:/<model id>
MODEL_ID_TAG = "etva.model_id"  # the logged model (MLflow 3) that holds the best checkpoint
MODEL_NAME = "model"  # the logged model's name on the run page
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
MAX_PARAM_LEN, PARAMS_PER_CALL, METRICS_PER_CALL = 6000, 90, 900  # server log_batch limits: 100 / 1000


def tracking_uri(cfg: Config) -> str:
    """The tracking server's http(s) address ("" = not tracking); a file/sqlite URI is refused."""
    uri = settings.tracking_uri(cfg.mlflow.tracking_uri)
    if uri and not uri.startswith(("http://", "https://", "databricks")):
        raise ValueError(
            f"mlflow.tracking_uri={uri!r}: use the http:// address of a tracking server "
            "(workers run in other folders and processes; start one with `bash cluster/start_local.sh`)"
        )
    return uri


def get_client(uri: str):
    """An ``MlflowClient`` for tracking and the model registry on ``uri``, logged in as the node's
    credentials say (``ray_jobs.credentials``: never from the runtime environment)."""
    # lazy: mlflow takes 2.5 s CPU to import; a process without a tracking server never pays it
    from mlflow.tracking import MlflowClient

    load_credentials()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(client, name: str) -> str:
    """The id of experiment ``name`` (created when missing), marked as a model-training experiment.

    The MLflow 3 UI opens an experiment in its GenAI view (traces, evaluation runs) unless its
    ``mlflow.experimentKind`` tag says ``custom_model_development``; then the runs table opens.
    """
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return exp.experiment_id


def find_run(client, exp_id: str, filter_string: str):
    """The first run of ``exp_id`` matching ``filter_string``, or None."""
    found = client.search_runs([exp_id], filter_string=filter_string, max_results=2)
    return found[0] if found else None


def run_url(uri: str, exp_id: str, run_id: str) -> str:
    """The run's page in the MLflow UI (its model-training view)."""
    return f"{uri.rstrip('/')}/#/experiments/{exp_id}/runs/{run_id}?workflowType=machine_learning"


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
    # lazy: mlflow takes 2.5 s CPU to import; a process without a tracking server never pays it
    from mlflow.entities import Param

    items = [Param(k, _param(v)) for k, v in params.items()]
    for s in range(0, len(items), PARAMS_PER_CALL):
        client.log_batch(run_id, params=items[s : s + PARAMS_PER_CALL])


def config_params(cfg: Config) -> dict[str, Any]:
    """The resolved config flattened to ``section.key`` params (the same keys for every run)."""
    return flatten(config_to_dict(cfg))


def metric_items(metrics: Mapping[str, float], step: int, model_id: str | None = None) -> list:
    """``mlflow.entities.Metric`` of the finite numeric values (one timestamp: retries are idempotent)."""
    # lazy: mlflow takes 2.5 s CPU to import; a process without a tracking server never pays it
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    return [
        Metric(k, float(v), ts, step, model_id=model_id)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and math.isfinite(float(v))
    ]


def log_metrics(
    client, run_id: str, metrics: Mapping[str, float], step: int = 0, model_id: str | None = None
) -> None:
    """Log finite numeric metrics at ``step`` in batches (linked to the logged model ``model_id``)."""
    items = metric_items(metrics, step, model_id)
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


MODEL_REQUIREMENTS = (
    "torch", "numpy", "pandas", "pyyaml", "av", "transformers", "sentencepiece", "matplotlib", "pillow", "tqdm",
    "mlflow",
)  # fmt: skip


def _requirements() -> list[str]:
    """Pinned versions of what ``etva`` and the pyfunc need (MLflow's inference would import the model)."""
    out = []
    for dist in MODEL_REQUIREMENTS:
        try:
            out.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            out.append(dist)
    return out


def log_best_model(client, run_id: str, ckpt_dir: str | Path, step: int = 0) -> str:
    """Log the checkpoint as the run's MLflow model (pyfunc from code: ``ray_jobs/mlflow_model.py``).

    Nothing is pickled: the model is that file, the ``etva`` package as code, and the checkpoint folder
    as the artifact ``checkpoint``. The run's metrics at ``step`` (the selected epoch) are linked to the
    model. Returns the logged model's id (``models:/<id>`` loads it; *Register model* on the run page
    registers it).
    """
    # lazy: mlflow takes 2.5 s CPU to import, pandas 0.7 s; only the run that logs a model pays them
    import mlflow
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    from ray_jobs import mlflow_model  # lazy: importing the model's code registers it with MLflow

    signature = ModelSignature(
        inputs=Schema(
            [
                ColSpec("string", mlflow_model.TEXT_COL),
                ColSpec("string", mlflow_model.VIDEO_COL, required=False),
                ColSpec("string", mlflow_model.ID_COL, required=False),
            ]
        ),
        params=ParamSchema([ParamSpec(mlflow_model.STORE_PARAM, "string", "")]),
    )
    mlflow.set_tracking_uri(client.tracking_uri)
    with mlflow.start_run(run_id=run_id):  # log_model attaches the model to the active run
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME,
            python_model=mlflow_model.__file__,
            artifacts={mlflow_model.CHECKPOINT_ARTIFACT: str(ckpt_dir)},
            code_paths=[str(Path(etva.__file__).parent)],
            signature=signature,
            input_example=pd.DataFrame({mlflow_model.TEXT_COL: ["a red circle moves to the left"]}),
            pip_requirements=_requirements(),
            step=step,
        )
    client.set_tag(run_id, MODEL_ID_TAG, info.model_id)
    client.set_tag(run_id, CHECKPOINT_TAG, f"models:/{info.model_id}")
    return info.model_id


def finish_run(
    client, run_id: str, best: dict[str, float] | None, best_ckpt_dir: str | None, status: str
) -> str | None:
    """Log the best checkpoint as the run's model, ``best/...`` metrics linked to it, and mark the run
    finished. Returns the logged model's id (None without a checkpoint or a run)."""
    if client is None:
        return None
    model_id = None
    if best_ckpt_dir:
        model_id = log_best_model(client, run_id, best_ckpt_dir, step=int((best or {}).get("epoch", 0)))
    if best:
        best_metrics = {f"best/{k.removeprefix('val/')}": v for k, v in best.items() if k.startswith("val/")}
        log_metrics(client, run_id, best_metrics, model_id=model_id)
    client.set_terminated(run_id, status=status)
    return model_id


def resolve_model_uri(client, uri: str) -> str:
    """``models:/<name>@<alias>``, ``models:/<name>/<version>`` or ``models:/<model id>`` (a logged
    model) -> the artifact location of that model."""
    # lazy: mlflow takes 2.5 s CPU to import; a process without a tracking server never pays it
    from mlflow.exceptions import MlflowException

    body = uri.removeprefix("models:/").strip("/")
    try:
        if "@" not in body and "/" not in body:
            return client.get_logged_model(body).artifact_location
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
    # lazy: mlflow takes 2.5 s CPU to import; a process without a tracking server never pays it
    import mlflow.artifacts

    client = get_client(tracking_uri)
    source = resolve_model_uri(client, uri) if uri.startswith("models:/") else uri
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    if not sys.stderr.isatty():  # a progress bar in a log is hundreds of lines: one summary line instead
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    t0 = time.perf_counter()
    local = Path(
        mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dst), tracking_uri=tracking_uri)
    )
    files = [p for p in local.rglob("*") if p.is_file()] if local.is_dir() else [local]
    mb = sum(p.stat().st_size for p in files) / 1e6
    logger.info("downloaded %s: %d files, %.1f MB in %.1f s", uri, len(files), mb, time.perf_counter() - t0)
    found = [local] if (local / MANIFEST).exists() else sorted(p.parent for p in local.rglob(MANIFEST))
    if len(found) != 1:
        raise LookupError(
            f"{uri}: expected one checkpoint (a folder with {MANIFEST}) in {local}, found {found}"
        )
    verify_checkpoint(found[0])
    return found[0]


@contextlib.contextmanager
def fail_fast(timeout_s: int = 10):
    """MLflow HTTP calls inside give up at once (no retries, ``timeout_s``) instead of ~4 min of backoff."""
    keys = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s)}
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class EpochLogger:
    """Rank 0's metrics into the run the driver created (a no-op without a run).

    Survives a tracking-server outage: metrics that cannot be sent are kept (with their timestamps, so a
    resend is idempotent) and sent with the next ``log`` once ``retry_s`` has passed, or by ``close``.
    Training never waits on a dead server for more than one fail-fast request per ``retry_s``.
    """

    def __init__(self, uri: str, run_id: str, retry_s: float = 15.0) -> None:
        self.client = get_client(uri) if uri and run_id else None
        self.run_id = run_id
        self.retry_s = retry_s
        self.pending: list = []  # mlflow Metric, oldest first
        self._next_try = 0.0
        self.outages = 0  # times the server was found unreachable
        self.logged_before: set[int] = set()  # epochs MLflow held when the run resumed (backfill)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        if self.client is None:
            return
        self.pending.extend(metric_items(metrics, step))
        self.flush()

    def flush(self, force: bool = False) -> bool:
        """Send what is buffered; False (and keep it) when the server is unreachable."""
        if self.client is None or not self.pending:
            return True
        if not force and time.monotonic() < self._next_try:
            return False
        try:
            with fail_fast():
                while self.pending:
                    self.client.log_batch(self.run_id, metrics=self.pending[:METRICS_PER_CALL])
                    del self.pending[:METRICS_PER_CALL]
        except Exception as e:  # connection refused, timeout, 5xx: keep the metrics, try again later
            self.outages += 1
            self._next_try = time.monotonic() + self.retry_s
            logger.warning(
                "MLflow unreachable (%s: %s); %d metric values buffered, retrying in %.0f s",
                type(e).__name__, str(e).splitlines()[0][:200], len(self.pending), self.retry_s,
            )  # fmt: skip
            return False
        return True

    def close(self, wait_s: float = 120.0) -> bool:
        """Flush at the end of training, retrying for up to ``wait_s``; False if metrics were lost."""
        deadline = time.monotonic() + wait_s
        while not self.flush(force=True):
            if time.monotonic() >= deadline:
                logger.error("MLflow still unreachable: %d metric values not logged", len(self.pending))
                return False
            time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
        return True

    def backfill(self, history: dict[str, dict], key: str = "val/t2v_R1") -> None:
        """Log epochs that the checkpoint holds but MLflow lacks (the job stopped between the two)."""
        if self.client is None:
            return
        try:
            with fail_fast(30):
                logged = {m.step for m in self.client.get_metric_history(self.run_id, key)}
                self.logged_before = set(logged)
        except Exception as e:  # server down: training matters more; the next resume back-fills
            logger.warning("MLflow unreachable (%s): epochs before the resume are not back-filled", e)
            return
        for epoch, metrics in sorted(history.items(), key=lambda kv: int(kv[0])):
            if int(epoch) not in logged:
                self.log({k: v for k, v in metrics.items() if k != "epoch"}, step=int(epoch))
