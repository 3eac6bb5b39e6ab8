"""Ray Data pipeline throughput vs the best plain single-machine decode, measured side by side in one run.

Same records (the shapes benchmark at the default clip size), same per-row transform
(`etva.data.example.make_video_example`: sampled decode + log-mel):

  plain-threads   one process, a thread pool of `--procs` threads
  plain-procs     a warm `--procs`-process pool
  ray-data        `ray_jobs.data.build_video_dataset` (index -> decode tasks) iterated to the end, warm
                  (the first pass starts the worker processes; the second pass is timed)

Goal: ray-data >= 80% of the faster plain mode.

    python -m benchmarks.bench_pipeline --num-videos 240
    python -m benchmarks.bench_pipeline --quick   # 64 videos, 1 round

Every mode decodes with one BLAS thread per process (`OMP_NUM_THREADS=1`, set here before numpy is
imported), as Ray does for its tasks: otherwise the plain modes' OpenBLAS threads double the log-mel CPU
per clip on 2 cores (docs/platform.md).

Starts a local Ray instance itself (``ray.init(num_cpus=--procs)``) and shuts it down at the end.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy: see the docstring

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchmarks.decode_baselines import throughput_process_pool, throughput_threaded
from etva.config import load_config
from etva.data import load_records
from etva.data.synth import generate_dataset

REPO = Path(__file__).resolve().parents[1]


def ray_data_throughput(records, cfg, passes: int = 2) -> list[float]:
    from ray_jobs.data import build_video_dataset

    ds = build_video_dataset(records, cfg.data, cfg.ray, shuffle=False)
    out = []
    for _ in range(passes):
        t0 = time.perf_counter()
        n = sum(len(b["video_index"]) for b in ds.iter_batches(batch_size=32, batch_format="numpy"))
        out.append(n / (time.perf_counter() - t0))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--num-videos", type=int, default=240)
    ap.add_argument("--procs", type=int, default=2, help="decode processes/threads/tasks in every mode")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="64 videos, 1 round")
    args = ap.parse_args()
    if args.quick:
        args.num_videos, args.rounds = 64, 1
    import ray

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "shapes"
        cfg = load_config(
            REPO / "ray_jobs/configs/shapes.yaml",
            # data.cache=none: shapes.yaml caches decoded clips, and the timed second pass would decode nothing
            [
                f"data.root={root}",
                f"ray.decode_concurrency={args.procs}",
                "ray.decode_cpus=1",
                "data.cache=none",
            ],
        )
        generate_dataset(root, args.num_videos, 0, cfg=cfg.data.synth, progress=False)
        records = load_records("msrvtt", root, "train", subset="1k-A")
        paths = [r.video_path for r in records]
        ray.init(num_cpus=args.procs, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        res = {"threads": [], "procs": [], "ray": []}
        for _ in range(args.rounds):  # interleaved rounds: load drifts on a shared machine
            res["threads"].append(throughput_threaded(paths, cfg.data, args.procs))
            res["procs"].append(throughput_process_pool(paths, cfg.data, args.procs))
            res["ray"].append(max(ray_data_throughput(records, cfg)[1:]))
        ray.shutdown()
    best_plain = max(max(res["threads"]), max(res["procs"]))
    ratio = max(res["ray"]) / best_plain
    out = {"num_clips": len(paths), "procs": args.procs, "clips_per_s": res, "ray_over_best_plain": ratio}
    print(json.dumps(out, indent=2))
    print(
        f"\nRay Data pipeline: {max(res['ray']):.1f} clips/s = {100 * ratio:.0f}% of the best plain mode "
        f"({best_plain:.1f} clips/s) (goal >= 80%)"
    )


if __name__ == "__main__":
    main()
