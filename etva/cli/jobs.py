"""``etva train``, ``etva tune``, ``etva study``, ``etva eval``: run the Ray entry points locally or submit them to a cluster.

These commands wrap the existing entry points (``python -m ray_jobs.train``, ``tuning.sweep``,
``ray_jobs.evaluate``) instead of re-implementing them. Before anything starts, the config and the
``a.b=c`` overrides are validated, the dataset, the Ray Jobs API (``GET <api>/api/gcs_healthz``) and the
MLflow server (``GET <uri>/health``) are checked, so a user mistake is one line plus a hint.

Where it runs:
  ``--local``   a subprocess ``python -m <entry> ... ray.address=local`` (a private Ray in this process tree);
  ``--submit``  ``ray job submit --address <api> --working-dir <repo> -- python -m <entry> ...``; the address
                is ``--address`` or ``$RAY_API_SERVER_ADDRESS`` (``source runs/local/env.sh`` sets it).
Without either flag: submit when a cluster is configured (``--address`` or ``$RAY_API_SERVER_ADDRESS``),
else run locally. This module imports neither ray nor mlflow (it runs their CLIs and HTTP endpoints).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from etva.cli import seam
from etva.cli.errors import UsageError
from etva.config import ConfigError, apply_overrides, config_from_dict, load_config
from etva.config.settings import DEFAULT_CONFIG, DEFAULT_SPACE, REPO, UNKNOWN_COMMIT, git_commit, tracking_uri

__all__ = [
    "add_train_parser", "add_tune_parser", "add_study_parser", "add_eval_parser", "check_url", "build_job", "run",
]  # fmt: skip

log = logging.getLogger(__name__)

START_HINT = "start one with: bash cluster/start_local.sh && source runs/local/env.sh (or pass --local)"
MLFLOW_HINT = (
    "start one with: bash cluster/start_local.sh && source runs/local/env.sh, or unset MLFLOW_TRACKING_URI"
)
MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")
STUDY_CONFIG = "ray_jobs/configs/study.yaml"
STUDY_SPACE = "tuning/spaces/ablations.yaml"


@dataclass(frozen=True)
class JobSpec:
    module: str  # the entry point run as ``python -m <module>``
    help: str
    description: str


JOBS: dict[str, JobSpec] = {
    "train": JobSpec(
        "ray_jobs.train",
        "train ETVA (submit to the Ray cluster, or --local)",
        "Train ETVA with Ray Train (python -m ray_jobs.train). Re-using --run-name resumes that run. "
        "Progress: one line per epoch in the job log (loss, val t2v R@1, ETA).",
    ),
    "tune": JobSpec(
        "tuning.sweep",
        "Ray Tune sweep (NetVLAD clusters, expert mix, loss weights)",
        "Run a Ray Tune sweep over a YAML search space (python -m tuning.sweep): one MLflow parent run, "
        "a child run per trial. Re-using --name resumes the sweep.",
    ),
    "study": JobSpec(
        "tuning.study",
        "ablation study: variants x seeds as Tune trials, the answer in one MLflow parent run",
        "Run an ablation study (python -m tuning.study): every variant of a study space (default: the "
        "paper's Tables 4-5, tuning/spaces/ablations.yaml) x N seeds on the same budget, each trial "
        "selecting its epoch on data.val_from_train and reporting data.test_split; the parent run holds "
        "the table with 95% intervals, the paired comparison with the reference and a picture "
        "(docs/study.md). Re-using --name resumes the study.",
    ),
    "extract": JobSpec(
        "ray_jobs.extract",
        "extract frozen pretrained-encoder features into a Parquet feature store",
        "Run the Ray Data extraction job (python -m ray_jobs.extract): decode every clip of extract.splits, "
        "encode it with each expert's frozen encoder (model.experts.<e>.encoder, pretrained_path) in an "
        "actor pool, write sharded Parquet stores under extract.output_dir. A re-run skips clips already "
        "done (docs/features.md).",
    ),
    "eval": JobSpec(
        "ray_jobs.evaluate",
        "evaluate a checkpoint (R@1/5/10, MdR, MnR both ways)",
        "Evaluate a checkpoint on a split with Ray (python -m ray_jobs.evaluate) and print the paper-style "
        "table. The checkpoint is a directory, models:/<name>@<alias> or models:/<model id>.",
    ),
}


def _usage_error(message: str, hint: str = "") -> Exception:
    return UsageError(message, hint)


def _add_common(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument("--local", action="store_true", help="run here in a subprocess with a private Ray")
    where.add_argument("--submit", action="store_true", help="submit to the Ray cluster (ray job submit)")
    p.add_argument("--address", default="", help="Ray Jobs API, e.g. http://127.0.0.1:8265 "
                   "(default: $RAY_API_SERVER_ADDRESS)")  # fmt: skip
    p.add_argument("--no-wait", action="store_true", help="submit and return (do not follow the job log)")
    p.add_argument("--working-dir", default=str(REPO), help="code uploaded with the job (default: the repo)")
    p.add_argument("--dry-run", action="store_true", help="check everything, print the command, run nothing")
    p.add_argument("overrides", nargs="*", help="config overrides a.b=c, e.g. train.epochs=4 data.root=/abs")


def _job_parser(
    subparsers: argparse._SubParsersAction, job: str, config_help: str
) -> argparse.ArgumentParser:
    spec = JOBS[job]
    p = subparsers.add_parser(job, help=spec.help, description=spec.description)
    p.add_argument("--config", default=DEFAULT_CONFIG, help=config_help)
    return p


def add_train_parser(subparsers: argparse._SubParsersAction) -> None:
    p = _job_parser(subparsers, "train", "YAML config (default: shapes)")
    p.add_argument("--run-name", default="", help="stable run name; re-using it resumes the run")
    _add_common(p)
    p.set_defaults(handler=run, job="train")


def add_tune_parser(subparsers: argparse._SubParsersAction) -> None:
    p = _job_parser(subparsers, "tune", "base YAML config (default: shapes)")
    p.add_argument(
        "--space", default="", help="search space YAML (default: tune.space or tuning/spaces/default.yaml)"
    )
    p.add_argument("--name", default="", help="stable sweep name; re-using it resumes the sweep")
    p.add_argument("--restart-errored", action="store_true", help="on resume, rerun errored trials")
    _add_common(p)
    p.set_defaults(handler=run, job="tune")


def add_study_parser(subparsers: argparse._SubParsersAction) -> None:
    p = _job_parser(subparsers, "study", "base YAML config (default: ray_jobs/configs/study.yaml)")
    p.set_defaults(config=STUDY_CONFIG)
    p.add_argument("--space", default=STUDY_SPACE, help=f"study space YAML (default: {STUDY_SPACE})")
    p.add_argument("--name", default="", help="stable study name; re-using it resumes the study")
    p.add_argument("--seeds", type=int, default=None, help="seeds per variant (default: the space's, 5)")
    p.add_argument("--variants", default="", help="comma-separated subset of the space's variants")
    p.add_argument("--restart-errored", action="store_true", help="on resume, rerun errored trials")
    _add_common(p)
    p.set_defaults(handler=run, job="study")


def add_extract_parser(subparsers: argparse._SubParsersAction) -> None:
    p = _job_parser(subparsers, "extract", "YAML config with the experts' encoders and extract.*")
    _add_common(p)
    p.set_defaults(handler=run, job="extract")


def add_eval_parser(subparsers: argparse._SubParsersAction) -> None:
    spec = JOBS["eval"]
    p = subparsers.add_parser("eval", help=spec.help, description=spec.description)
    p.add_argument("--checkpoint", required=True, help="checkpoint dir, runs:/… or models:/<name>@<alias>")
    p.add_argument("--split", default="", help="split to evaluate (default: the config's data.val_split)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the result to MLflow")
    _add_common(p)
    p.set_defaults(handler=run, job="eval")


def check_url(url: str, what: str, hint: str, timeout: float = 3.0) -> None:
    """GET ``url``; anything but HTTP 200 raises a one-line UsageError naming ``what``."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            if resp.status == 200:
                return
            reason = f"HTTP {resp.status}"
    except urllib.error.HTTPError as e:
        reason = f"HTTP {e.code}"
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = str(getattr(e, "reason", e))
    raise _usage_error(f"{what} is not reachable at {url} ({reason})", hint)


def _jobs_address(args: argparse.Namespace) -> str:
    address = args.address or os.environ.get("RAY_API_SERVER_ADDRESS", "")
    if not address and os.environ.get("RAY_ADDRESS", "").startswith("http"):
        address = os.environ["RAY_ADDRESS"]
    if address and "://" not in address:
        address = f"http://{address}"
    return address.rstrip("/")


def _mode(args: argparse.Namespace, address: str) -> str:
    if args.local:
        return "local"
    if args.submit and not address:
        raise _usage_error("--submit: no Ray cluster configured (no --address, $RAY_API_SERVER_ADDRESS unset)",
                           START_HINT)  # fmt: skip
    return "submit" if address else "local"


def _abs(path: str) -> str:
    return path if not path or "://" in path else str(Path(path).expanduser().resolve())


def _load_config(config: str | None, overrides: list[str], source_yaml: str | None = None):
    """Validate config + overrides (``source_yaml``: a checkpoint's config.yaml text instead of a file)."""
    try:
        if source_yaml is not None:
            return config_from_dict(
                apply_overrides(yaml.safe_load(source_yaml) or {}, overrides), config or ""
            )
        return load_config(config, overrides)
    except ConfigError as e:
        raise _usage_error(str(e), "see ray_jobs/configs/*.yaml and etva/config/__init__.py for the keys") from e


def _config_path(config: str, working_dir: Path, relative: bool) -> str:
    """The config path as the job sees it (``relative``: to the uploaded working dir when inside it)."""
    path = Path(config).expanduser()
    if not path.is_file() and (working_dir / path).is_file():
        path = working_dir / path
    if not path.is_file():
        raise _usage_error(f"--config {config}: no such file", "configs live in ray_jobs/configs/")
    path = path.resolve()
    return str(path.relative_to(working_dir)) if relative and working_dir in path.parents else str(path)


def _check_dataset(cfg, mode: str, address: str) -> None:
    """A missing dataset is a user mistake, checked when the job sees this machine's files."""
    if mode != "local" and not any(h in address for h in ("127.0.0.1", "localhost")):
        return
    root = Path(cfg.data.root) if cfg.data.root else None
    if root is None:
        raise _usage_error("data.root is empty", "pass data.root=/path/to/dataset")
    if (not root.is_dir() or not any(root.iterdir())) and not cfg.data.synthesize_if_missing:
        raise _usage_error(f"data.root={root}: no dataset there",
                           f"generate one with: etva data synth --out {root} (or data.synthesize_if_missing=true)")  # fmt: skip


def _train_args(args: argparse.Namespace, working_dir: Path, mode: str) -> tuple[list[str], object]:
    config = _config_path(args.config, working_dir, relative=False)
    cfg = _load_config(config, args.overrides)
    extra = [f"data.root={_abs(cfg.data.root)}"] if cfg.data.root else []
    if cfg.ray.storage_path:
        extra.append(f"ray.storage_path={_abs(cfg.ray.storage_path)}")
    extra = [e for e in extra if e not in args.overrides]
    argv = ["--config", _config_path(config, working_dir, relative=mode == "submit")]
    if args.job == "train" and args.run_name:
        argv += ["--run-name", args.run_name]
    if args.job == "tune":
        space = args.space or cfg.tune.space or str(REPO / DEFAULT_SPACE)
        if not Path(space).is_file():
            raise _usage_error(f"--space {space}: no such file", "search spaces live in tuning/spaces/")
        _validate_space(space, cfg)
        argv += ["--space", _abs(space)] + (["--name", args.name] if args.name else [])
        argv += ["--restart-errored"] if args.restart_errored else []
    if args.job == "study":
        argv += _study_args(args, cfg)
    return argv + list(args.overrides) + extra, cfg


def _study_args(args: argparse.Namespace, cfg) -> list[str]:
    """The study's own options, after checking the space file and the config (a user mistake is one line)."""
    space = args.space if Path(args.space).is_file() else str(REPO / args.space)
    if not Path(space).is_file():
        raise _usage_error(f"--space {args.space}: no such file", f"the paper's study is {STUDY_SPACE}")
    only = [v.strip() for v in args.variants.split(",") if v.strip()] or None
    try:
        seam.load_study(space, cfg, args.seeds, only)
    except ConfigError as e:
        raise _usage_error(str(e), "see docs/study.md for the study space format") from e
    argv = ["--space", _abs(space)] + (["--name", args.name] if args.name else [])
    argv += ["--seeds", str(args.seeds)] if args.seeds is not None else []
    argv += ["--variants", args.variants] if args.variants else []
    return argv + (["--restart-errored"] if args.restart_errored else [])


def _validate_space(space: str, cfg) -> None:
    try:
        seam.load_space(space, cfg)
    except ConfigError as e:
        raise _usage_error(str(e), "every key of a search space must be a config key") from e


def _eval_args(args: argparse.Namespace) -> tuple[list[str], object]:
    ckpt = args.checkpoint
    if ckpt.startswith(MLFLOW_SCHEMES):
        cfg = _load_config(None, args.overrides)  # keys checked against the schema
        if not tracking_uri(cfg.mlflow.tracking_uri):
            raise _usage_error(f"--checkpoint {ckpt}: an MLflow URI needs a tracking server",
                               "set MLFLOW_TRACKING_URI (source runs/local/env.sh)")  # fmt: skip
    else:
        path = Path(ckpt).expanduser()
        if not (path / "model.pt").is_file():
            raise _usage_error(f"--checkpoint {ckpt}: not a checkpoint directory (no model.pt)",
                               "pass an epoch_NNNN folder of a run or models:/<name>@champion")  # fmt: skip
        text = (path / "config.yaml").read_text() if (path / "config.yaml").is_file() else ""
        cfg = _load_config(f"{path}/config.yaml", args.overrides, source_yaml=text)
        ckpt = _abs(ckpt)
    argv = ["--checkpoint", ckpt] + (["--split", args.split] if args.split else [])
    argv += ["--no-mlflow"] if args.no_mlflow else []
    given_root = any(o.startswith("data.root=") for o in args.overrides)
    return argv + list(args.overrides) + ([f"data.root={_abs(cfg.data.root)}"] if given_root else []), cfg


def _ray_cli() -> str:
    exe = Path(sys.executable).parent / "ray"
    found = str(exe) if exe.is_file() else shutil.which("ray")
    if not found:
        raise _usage_error("the 'ray' command is not installed", "pip install 'ray[default]'")
    return found


PROFILE_ENV = ("ETVA_PROFILE_EPOCH", "ETVA_PROFILE_DIR")


def build_job(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """Validate everything and return (command, extra environment) for ``args``; runs nothing."""
    spec = JOBS[args.job]
    working_dir = Path(args.working_dir).expanduser().resolve()
    if not (working_dir / spec.module.replace(".", "/")).with_suffix(".py").is_file():
        raise _usage_error(
            f"--working-dir {working_dir}: no {spec.module} there", "run etva from the repository"
        )
    address = _jobs_address(args)
    mode = _mode(args, address)
    job_argv, cfg = _eval_args(args) if args.job == "eval" else _train_args(args, working_dir, mode)
    if args.job != "eval":
        _check_dataset(cfg, mode, address)
    uri, login_env = tracking_uri(cfg.mlflow.tracking_uri), {}
    if uri and not (args.job == "eval" and args.no_mlflow and not args.checkpoint.startswith(MLFLOW_SCHEMES)):
        check_url(f"{uri.rstrip('/')}/health", f"the MLflow server ({uri})", MLFLOW_HINT)
        login_env = seam.check_mlflow_login(uri)  # before anything is submitted
        if not cfg.mlflow.tracking_uri:
            job_argv.append(f"mlflow.tracking_uri={uri}")  # the job may not inherit this shell's env
    if mode == "local":
        env = {
            "PYTHONPATH": os.pathsep.join(p for p in (str(working_dir), os.environ.get("PYTHONPATH")) if p)
        }
        return [sys.executable, "-m", spec.module, *job_argv, "ray.address=local"], env
    check_url(f"{address}/api/gcs_healthz", f"the Ray cluster ({address})", START_HINT)
    submit = [_ray_cli(), "job", "submit", "--address", address, "--working-dir", str(working_dir)]
    submit += ["--no-wait"] if args.no_wait else []
    # the job's environment comes from the cluster, not this shell; the upload has no .git folder
    env_vars = {"MLFLOW_TRACKING_URI": uri} if uri else {}
    env_vars.update(login_env)  # a credentials file's path on the nodes, never the login itself
    if (commit := git_commit(working_dir)) != UNKNOWN_COMMIT:
        env_vars["ETVA_GIT_COMMIT"] = commit  # MLflow's mlflow.source.git.commit of the run
    # one epoch's profile asked for in this shell (ray_jobs/profiling.py; files on rank 0's node)
    env_vars.update({k: os.environ[k] for k in PROFILE_ENV if os.environ.get(k)})
    if env_vars:
        submit += ["--runtime-env-json", json.dumps({"env_vars": env_vars})]
    return [*submit, "--", "python", "-m", spec.module, *job_argv], {}


def run(args: argparse.Namespace) -> int:
    """Handler of ``etva train|tune|eval``: the job's exit code (2 for user mistakes, via UsageError)."""
    cmd, env = build_job(args)
    print(("would run: " if args.dry_run else "running: ") + shlex.join(cmd), file=sys.stderr, flush=True)
    if args.dry_run:
        return 0
    return subprocess.run(cmd, env={**os.environ, **env}).returncode
