"""Feature extraction throughput: the Ray Data job vs a plain single-process loop, side by side in one run.

Same clips (the shapes benchmark), same decode (``etva.features.extractor.decode_extract_batch``: PyAV sampled
decode), same encoder (a randomly initialised CLIP vision tower saved with ``save_pretrained`` and loaded
through ``etva.model.pretrained``), same batch size and torch threads per encoder:

  plain        ``etva.features.extractor.extract_local``: decode a batch, encode it, write shards, in one process
  ray-1actor   ``ray_jobs.extract.run_extract`` with one encoder actor (decode runs in its own task)
  ray-2actors  the same with two actors

Every mode writes a fresh store. Per mode: clips/s end to end (model load, Ray Data start-up and actor
start included) and the seconds until the first shard is written (start-up latency). Ray Data hands
finished batches to the driver in bursts, so a between-shards rate would not measure the encoder.
Rounds are interleaved (plain, ray-1, ray-2, plain, ...) so machine load hits every mode alike.

    python -m benchmarks.bench_extract --num-videos 96 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from etva.config import load_config
from etva.data.synth import generate_dataset
from etva.features.extractor import extract_local

REPO = Path(__file__).resolve().parents[1]
PRESETS = {  # CLIP vision tower sizes (random weights)
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
                  image_size=112, patch_size=16, projection_dim=256),
    "vit-b32": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                    image_size=224, patch_size=32, projection_dim=512),
}  # fmt: skip


def _save_clip(folder: Path, preset: str) -> None:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    CLIPVisionModelWithProjection(CLIPVisionConfig(**PRESETS[preset])).save_pretrained(folder)


def _config(root: Path, model: Path, out: Path, args, actors: int):
    size = PRESETS[args.preset]["image_size"]
    return load_config(
        REPO / "ray_jobs/configs/shapes.yaml",
        [
            f"data.root={root}",
            "model.experts={appearance: {kind: features, encoder: clip, pretrained_path: " + f"{model}}}}}",
            f"extract.output_dir={out}",
            "extract.splits=[train, test]",
            f"extract.num_frames={args.frames}",
            f"extract.frame_size={size}",
            f"extract.batch_size={args.batch_size}",
            f"extract.shard_size={args.batch_size * 4}",
            f"extract.num_actors={actors}",
            f"extract.torch_threads={args.threads}",
            "extract.cpus_per_actor=0.5",
            "extract.decode_cpus=0.5",
        ],
    )


def _plain(cfg) -> tuple[float, float]:
    from ray_jobs.extract import extraction_rows

    rows = extraction_rows(cfg)
    t0 = time.perf_counter()
    s = extract_local(cfg, rows)
    return len(rows) / (time.perf_counter() - t0), s["first_shard_s"]


def _ray(cfg) -> tuple[float, float]:
    from ray_jobs.extract import run_extract

    t0 = time.perf_counter()
    s = run_extract(cfg)
    return s["processed"] / (time.perf_counter() - t0), s["first_shard_s"]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--num-videos", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="small")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per encoder (plain and each actor)")
    args = ap.parse_args(argv)
    import ray

    torch.set_num_threads(args.threads)
    modes = ("plain", "ray-1actor", "ray-2actors")
    results: dict[str, list[float]] = {m: [] for m in modes}
    first: dict[str, list[float]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg0 = load_config(REPO / "ray_jobs/configs/shapes.yaml", [f"data.root={tmp / 'shapes'}"])
        generate_dataset(tmp / "shapes", args.num_videos, 0, cfg=cfg0.data.synth, progress=False)
        _save_clip(tmp / "clip", args.preset)
        ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False)
        try:
            for r in range(args.rounds):
                for mode, actors in (("plain", 1), ("ray-1actor", 1), ("ray-2actors", 2)):
                    cfg = _config(tmp / "shapes", tmp / "clip", tmp / f"out-{mode}-{r}", args, actors)
                    rate, st = _plain(cfg) if mode == "plain" else _ray(cfg)
                    results[mode].append(round(rate, 3))
                    first[mode].append(st)
                    print(f"round {r} {mode}: {rate:.2f} clips/s, first shard after {st} s", flush=True)
        finally:
            ray.shutdown()
    best = {k: max(v) for k, v in results.items()}
    summary = {
        "args": vars(args),
        "clips_per_s": results,
        "first_shard_s": first,
        "best": best,
        "ray1_over_plain": round(best["ray-1actor"] / best["plain"], 3),
        "ray2_over_plain": round(best["ray-2actors"] / best["plain"], 3),
        "load_avg": os.getloadavg(),
    }
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
