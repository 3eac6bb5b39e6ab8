"""The paper's Tables 4 and 5 as a benchmark: runs the ablation study itself (``python -m tuning.study``).

    python -m benchmarks.ablation [--seeds 5] [--name tables45] [a.b=c ...]   # ray_jobs/configs/study.yaml
    python -m benchmarks.ablation --quick      # 2 variants x 1 seed of the tiny config (a smoke run)

There is no second implementation here: the five variants x seeds run as the study's Tune trials, and the
table (mean +- std and 95% interval per variant, paired bootstrap against ETVA-shared) is the study's, as
logged to its MLflow parent run and printed at the end (docs/study.md). With ``$RAY_ADDRESS`` and
``$MLFLOW_TRACKING_URI`` both set (``source runs/local/env.sh``) it uses that Ray head and MLflow server;
otherwise it starts a private pair on free ports (``cluster.local``) and stops it at the end. Re-running
with the same ``--name`` against the same servers resumes the study.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUICK = ["--config", str(REPO / "ray_jobs/configs/tiny.yaml"), "--seeds", "1", "--variants",
         "global_only,shared_centres", "data.synth.mode=compositional", "data.synth.duration_s=2.0", "data.subset=full",
         "data.val_from_train=4", "data.test_split=test", "data.synth.num_videos=24", "train.epochs=1",
         "ray.num_workers=1", "tune.max_concurrent_trials=1"]  # fmt: skip


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 variants x 1 seed of the tiny config")
    p.add_argument("--name", default="", help="study name (default: ablation-<time>)")
    p.add_argument("--root", default="", help="data root (default: a folder under /tmp)")
    return p.parse_known_args(argv)


@contextlib.contextmanager
def servers() -> Iterator[dict[str, str]]:
    """The environment of a Ray head + MLflow server: the configured ones, or a private pair."""
    if os.environ.get("RAY_ADDRESS") and os.environ.get("MLFLOW_TRACKING_URI"):
        yield dict(os.environ)
        return
    sys.path.insert(0, str(REPO))
    from cluster import local

    settings = local.private_settings(4, prefix="etva-abl-")
    try:
        cluster = local.start_all(settings)
        yield cluster.subprocess_env()
    finally:
        local.stop_all(settings)


def main(argv: list[str] | None = None) -> int:
    args, rest = parse_args(argv)
    name = args.name or f"ablation{'-quick' if args.quick else ''}-{time.strftime('%Y%m%d-%H%M%S')}"
    root = args.root or f"/tmp/etva_ablation_{'quick' if args.quick else 'compositional'}"
    cmd = [sys.executable, "-m", "tuning.study", "--name", name, *(QUICK if args.quick else []), *rest,
           f"data.root={root}", "data.synthesize_if_missing=true"]  # fmt: skip
    t0 = time.time()
    with servers() as env:
        env = {**env, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
        print("running: " + " ".join(cmd), flush=True)
        code = subprocess.run(cmd, cwd=REPO, env=env).returncode
    print(f"\nablation study {name}: {time.time() - t0:.0f} s, exit {code}")
    return code


if __name__ == "__main__":
    sys.exit(main())
