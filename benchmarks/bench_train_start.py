"""Ray Train's own start-up floor: ``fit()`` to the first line of an empty training function.

The jobs' start-up (``fit()`` -> first batch, split by ``benchmarks.bench_ray_overhead``) has a part no
code of ours runs in: Train V2 starts a controller actor and the worker actors (each a new Python
process that imports Ray Train), sets up the process group, then calls the training function. This
bench measures that part alone, with a training function that only notes the time, next to what our
worker then imports before it can build the model (torch, Ray Train's torch backend, ALBERT, the
recipe), in the same run:

    python -m benchmarks.bench_train_start               # 1 and 2 workers, 2 fits each
    python -m benchmarks.bench_train_start --fits 3 --workers 1

Printed per fit: ``fit()`` -> worker process created, -> training function entered, then the seconds
our imports take inside it (the first fit of a process pays them; Ray starts new worker processes for
every fit, so every fit does), and the machine's ``import torch`` time in a fresh interpreter as a
yardstick of its speed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _fn(config: dict) -> None:
    entered = time.time()
    t0 = time.perf_counter()
    import ray.train
    import transformers.models.albert.modeling_albert  # noqa: F401  (the text encoder)

    import ray_jobs.recipe  # noqa: F401  (torch, Ray Train's torch backend, the engine)

    imports = time.perf_counter() - t0
    import psutil

    rank = ray.train.get_context().get_world_rank()
    out = {"entered": entered, "imports_s": imports, "process_start": psutil.Process().create_time()}
    Path(config["out"], f"rank{rank}.json").write_text(json.dumps(out))


def _import_torch_s() -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fits", type=int, default=2, help="fits per worker count")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = p.parse_args(argv)
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ray_jobs.driver import init_ray

    print(f"import torch in a fresh interpreter: {_import_torch_s():.2f} s (this machine's yardstick)")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    init_ray("local", num_cpus=4, include_dashboard=False, log_to_driver=False)  # as a job driver does
    try:
        with tempfile.TemporaryDirectory(prefix="etva-train-start-") as tmp:
            for workers in args.workers:
                for k in range(args.fits):
                    out = Path(tmp, f"w{workers}-{k}")
                    out.mkdir()
                    t0 = time.time()
                    TorchTrainer(
                        _fn,
                        train_loop_config={"out": str(out)},
                        scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 0.5}),
                        run_config=RunConfig(name=f"start-{time.time_ns()}", storage_path=str(Path(tmp, "runs"))),
                    ).fit()
                    wall = time.time() - t0
                    ranks = [json.loads(f.read_text()) for f in sorted(out.glob("rank*.json"))]
                    proc = max(r["process_start"] for r in ranks) - t0
                    entered = max(r["entered"] for r in ranks) - t0
                    imports = max(r["imports_s"] for r in ranks)
                    print(f"{workers} worker(s), fit {k + 1}: fit() -> worker process {proc:.2f} s, -> training "
                          f"function entered {entered:.2f} s (Ray Train alone); our imports then {imports:.2f} s; "
                          f"fit() returned after {wall:.2f} s")  # fmt: skip
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
