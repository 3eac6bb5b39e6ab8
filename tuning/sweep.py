"""Ray Tune sweep over the training job (NetVLAD cluster count, expert mix, loss weights, lr, ...).

    python -m tuning.sweep --config ray_jobs/configs/shapes.yaml --space tuning/spaces/default.yaml \
        --name my-sweep data.root=/abs/data/shapes tune.num_samples=8
    ray job submit --working-dir . -- python -m tuning.sweep --config ... --space ... --name ...

Each trial is a driver function that fits the training job's TorchTrainer (``tuning.trial``). Re-running
with the same ``--name`` resumes the sweep: finished trials are not run again, unfinished ones continue
(their Train runs resume from their last checkpoints), and the same MLflow parent run is continued.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import ray
import yaml
from ray import tune
from ray.tune.search.basic_variant import BasicVariantGenerator

from etva.config import Config, ConfigError, config_to_dict
from etva.config.settings import DEFAULT_SPACE, REPO, git_commit
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
from ray_jobs.recipe import EPOCHS_DONE
from ray_jobs.run_record import NOTE, captured_log, source_tags, upload_log
from ray_jobs.tracking import (
    experiment_id,
    get_client,
    job_submission_id,
    log_text,
    tracking_uri,
)
from tuning.callbacks import RecordingASHA, SweepMlflowCallback
from tuning.mlflow_sweep import close_unfinished, log_summary, start_or_resume_parent, to_markdown
from tuning.shared_data import OUTCOME_TAG, describe, prepare_shared, reuse_note
from tuning.space import SearchSpace, dump_space, load_space, to_tune_space
from tuning.trial import SweepContext, in_process, run_trial

logger = logging.getLogger("etva.sweep")
DRIVER_CPU = 0.1  # the trial driver function's own CPU (0 is rejected by Tune)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = job_parser("python -m tuning.sweep", __doc__.split("\n\n")[0])
    p.add_argument(
        "--space", default="", help="search space YAML (default: tune.space or spaces/default.yaml)"
    )
    p.add_argument("--name", default="", help="stable sweep name: re-running with it resumes the sweep")
    p.add_argument(
        "--restart-errored", action="store_true", help="on resume, rerun errored trials from scratch"
    )
    add_overrides(p)
    return p.parse_args(argv)


def process_resources(cfg: Config) -> dict[str, float]:
    """What Tune reserves for a trial's own process: the one worker's CPU (and GPU) when it trains there
    (``tuning.trial.in_process``), else a driver's sliver (its TorchTrainer reserves the workers)."""
    r = cfg.ray
    if not in_process(cfg):
        return {"CPU": DRIVER_CPU}
    out = {"CPU": r.cpus_per_worker}
    if r.use_gpu:
        out["GPU"] = r.gpus_per_worker
    return out


def trial_resources(cfg: Config) -> dict[str, float]:
    """What one trial holds at peak: its process, its Train workers (if any) and its Ray Data decode tasks."""
    r = cfg.ray
    own = process_resources(cfg)
    workers = 0 if in_process(cfg) else r.num_workers
    out = {"CPU": own["CPU"] + workers * r.cpus_per_worker + r.decode_cpus * max(1, r.decode_concurrency)}
    if r.use_gpu:
        out["GPU"] = own.get("GPU", 0.0) + workers * r.gpus_per_worker
    return out


def max_concurrent_trials(cfg: Config, cluster: dict[str, float]) -> int:
    """``tune.max_concurrent_trials``, or as many trials as the cluster holds side by side (>= 1).

    Raises ConfigError when not even one trial fits (it would wait forever).
    """
    need = trial_resources(cfg)
    fits = min(math.floor(cluster.get(k, 0.0) / v + 1e-9) for k, v in need.items() if v > 0)
    if fits < 1:
        raise ConfigError(
            f"one trial needs {need} (ray.num_workers x cpus/gpus_per_worker, + {DRIVER_CPU} CPU driver "
            f"with more than one worker, + decode_cpus x decode_concurrency) but the cluster has {cluster}"
        )
    if cfg.tune.max_concurrent_trials > 0:
        if cfg.tune.max_concurrent_trials > fits:
            logger.warning(
                "tune.max_concurrent_trials=%d > %d trials that fit the cluster: trials will queue",
                cfg.tune.max_concurrent_trials,
                fits,
            )
        return cfg.tune.max_concurrent_trials
    return fits


def metric_mode(metric: str) -> str:
    """ "min" for ranks and losses (``.._MdR``, ``.._MnR``, ``..loss``), else "max" (recalls)."""
    return "min" if metric.endswith(("MdR", "MnR", "loss")) else "max"


def build_search(cfg: Config, space: SearchSpace, concurrency: int):
    """(search_alg, scheduler, param_space, num_samples) from ``cfg.tune``.

    ``concurrency`` goes into the BasicVariantGenerator itself: Tune ignores ``max_concurrent_trials``
    for a generator passed as ``search_alg`` (it then started all 16 trials of a test sweep at once on
    4 CPUs, and their Train runs waited forever for workers). OptunaSearch is limited by TuneConfig.
    """
    t = cfg.tune
    searches = ("random", "grid", "optuna")
    if t.search not in searches:
        raise ConfigError(f"tune.search={t.search!r}: expected one of {searches}")
    if t.scheduler not in ("asha", "fifo"):
        raise ConfigError(f"tune.scheduler={t.scheduler!r}: expected asha or fifo")
    param_space = to_tune_space(space, t.search)
    num_samples = 1 if t.search == "grid" else t.num_samples
    if t.search == "optuna":
        # optional dependency: optuna, needed only for tune.search=optuna
        from optuna.samplers import TPESampler
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(sampler=TPESampler(seed=cfg.train.seed))  # metric/mode: TuneConfig
    else:
        search_alg = BasicVariantGenerator(random_state=cfg.train.seed, max_concurrent=concurrency)
    scheduler = None
    if t.scheduler == "asha":
        scheduler = RecordingASHA(
            time_attr=EPOCHS_DONE,
            max_t=t.max_epochs,
            grace_period=min(t.grace_period, t.max_epochs),
            reduction_factor=t.reduction_factor,
        )
    return search_alg, scheduler, param_space, num_samples


def _space_path(args: argparse.Namespace, cfg: Config) -> str:
    return args.space or cfg.tune.space or str(REPO / DEFAULT_SPACE)


def _tracking(cfg: Config, name: str, space: SearchSpace, args: argparse.Namespace):
    """(client, uri, exp_id, parent_id) for the sweep; (None, "", "", "") without a tracking server."""
    uri = tracking_uri(cfg)
    if not uri:
        logger.warning("no MLflow tracking URI (mlflow.tracking_uri / $MLFLOW_TRACKING_URI): not tracking")
        return None, "", "", ""
    client = get_client(uri)
    exp_id = experiment_id(client, cfg.mlflow.experiment)
    settings = {"sweep.space_file": space.source, "sweep.swept": ",".join(space.swept)}
    tags = {
        **source_tags("tuning.sweep", git_commit()),
        "git_commit": git_commit(),
        "ray_job_submission_id": job_submission_id(),
        "config_file": args.config,
    }
    parent_id, resumed = start_or_resume_parent(client, exp_id, name, cfg, settings, tags)
    if not resumed:
        log_text(client, parent_id, dump_space(space), "search_space.yaml")
        log_text(client, parent_id, yaml.safe_dump(config_to_dict(cfg), sort_keys=False), "base_config.yaml")
    logger.info("MLflow parent run %s (%s)", parent_id, "resumed" if resumed else "new")
    return client, uri, exp_id, parent_id


def build_tuner(
    cfg: Config, space: SearchSpace, name: str, storage: str, tracking, restart_errored: bool, shared=None
):
    """A new Tuner, or the restored one when ``<storage>/<name>`` holds an interrupted sweep. ``shared``
    (``tuning.shared_data.SharedData``): the data the driver prepared for the trials."""
    _, uri, exp_id, parent_id = tracking
    t = cfg.tune
    ctx = SweepContext(
        base=config_to_dict(cfg),
        space=space,
        sweep_name=name,
        train_storage=f"{storage}/{name}/train",
        mlflow_uri=uri,
        exp_id=exp_id,
        parent_id=parent_id,
        max_epochs=t.max_epochs,
        shared=shared,
        cache_root=storage,
    )
    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), process_resources(cfg))
    path = f"{storage}/{name}"
    if tune.Tuner.can_restore(path):
        logger.info("resuming sweep %s from %s", name, path)
        return tune.Tuner.restore(
            path, trainable=trainable, resume_errored=not restart_errored, restart_errored=restart_errored
        )
    concurrency = max_concurrent_trials(cfg, ray.cluster_resources())
    search_alg, scheduler, param_space, num_samples = build_search(cfg, space, concurrency)
    logger.info("sweep %s: up to %d trials at a time, %s each", name, concurrency, trial_resources(cfg))
    callback = SweepMlflowCallback(ctx.mlflow_uri, exp_id, name, t.metric, t.max_epochs, scheduler)
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=t.metric,
            mode=metric_mode(t.metric),
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=num_samples,
            max_concurrent_trials=concurrency if t.search == "optuna" else None,
            time_budget_s=t.time_budget_s if t.time_budget_s > 0 else None,
            # one warm process trains trial after trial (imports, compiled code, the prepared data)
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            callbacks=[callback],
            # a warm trial whose process dies is retried by Tune and resumes from its run folder; a
            # TorchTrainer trial restarts its own workers (ray.max_failures) and is not retried
            failure_config=tune.FailureConfig(max_failures=cfg.ray.max_failures if in_process(cfg) else 0),
            verbose=1,
        ),
    )


def _prepare_once(cfg: Config, name: str, storage: str, client, parent_id: str):
    """The base config's data, prepared once for every trial (``tuning.shared_data``); what that did
    goes to the log and the parent run (tag, ``prep/...`` metrics)."""
    t0 = time.time()
    shared = prepare_shared(cfg, name, storage)
    shared.outcome["seconds"] = round(time.time() - t0, 1)
    logger.info("%s (%.1f s)", describe(shared.outcome), shared.outcome["seconds"])
    if client is not None:
        client.set_tag(parent_id, OUTCOME_TAG, json.dumps(shared.outcome))
        for key in ("clips_decoded", "tokenizer_trained", "seconds"):
            client.log_metric(parent_id, f"prep/{key}", float(shared.outcome[key]))
    return shared


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    disable_mlflow_telemetry()
    # Tune snapshots the sweep state every 10 s by default: a driver killed within 10 s of a trial's
    # end would run that trial again on resume. The state is small; snapshot every 2 s.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    args = parse_args(argv)
    with (
        tempfile.TemporaryDirectory() as tmp,
        captured_log(Path(tmp) / f"sweep-{time.strftime('%Y%m%d-%H%M%S')}.log") as log,
    ):
        return _sweep(args, log)


def _sweep(args: argparse.Namespace, log: Path) -> int:
    """The sweep: parent run, Tune, the summary; the driver's log goes to the parent run at the end."""
    cfg = load_job_config(args.config, args.overrides)
    space = load_space(_space_path(args, cfg), cfg)
    name = (
        args.name or cfg.ray.run_name or f"sweep-{Path(space.source).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    storage = storage_path(cfg)
    ensure_dataset(cfg.data)  # once here: concurrent trials must not race to generate it
    init_ray(cfg.ray.address)
    tracking = _tracking(cfg, name, space, args)
    client, _, exp_id, parent_id = tracking
    t0 = time.time()
    status, prepared = "FAILED", ""
    try:
        shared = _prepare_once(cfg, name, storage, client, parent_id)
        prepared = describe(shared.outcome)
        tuner = build_tuner(cfg, space, name, storage, tracking, args.restart_errored, shared)
        results = tuner.fit()
        done = results.num_terminated + results.num_errors
        status = "FAILED" if results.num_errors else ("FINISHED" if done == len(results) else "KILLED")
        logger.info(
            "sweep %s: %d trials, %d errored, %d unfinished, %.0f s",
            name,
            len(results),
            results.num_errors,
            len(results) - done,
            time.time() - t0,
        )
    finally:
        if client is not None:
            if close_unfinished(client, exp_id, parent_id):
                logger.warning(
                    "sweep %s stopped before every trial finished (time budget or interrupt)", name
                )
            rows = log_summary(client, exp_id, parent_id, space.swept)
            title = f"sweep {name} ({time.time() - t0:.0f} s); trials by best val t2v R@1:"
            reuse = reuse_note(client, exp_id, parent_id, prepared)
            client.set_tag(parent_id, NOTE, f"### {title}\n\n{to_markdown(rows)}\n\n{reuse}")
            print(f"\n{title}")
            print(to_markdown(rows))
            print(reuse)
            upload_log(client, parent_id, log)
            client.set_terminated(parent_id, status=status)
    return 0 if status == "FINISHED" else 1


if __name__ == "__main__":
    sys.exit(main())
