"""Learning curves of a study's trials, read back from MLflow: per epoch the validation text->video R@1,
group R@1 and pairwise binding accuracy, then each trial's test metrics at its selected epoch.

    source runs/local/env.sh
    .venv/bin/etva study --name curves-300x40 --variants global_only,shared_centres --seeds 1 \
        data.root=$PWD/data/compositional ray.storage_path=$PWD/runs/ray train.epochs=40
    .venv/bin/python -m benchmarks.study_curves --name curves-300x40 [--every 5]

Chance levels: R@1 = 100 / test videos, group R@1 = 100 / group size (25 with 4), pairwise accuracy 50.
"""

from __future__ import annotations

import argparse
import os
import sys

CURVE = ("val/t2v_R1", "val/group_R1", "val/pair_acc", "val/pair_acc_order", "val/pair_acc_sound_moment")
TEST = ("t2v_R1", "group_R1", "pair_acc_colour", "pair_acc_motion", "pair_acc_order", "pair_acc_sound_moment")


def curves(client, run_id: str) -> dict[str, dict[int, float]]:
    """{metric: {epoch: value}} of one trial's per-epoch validation metrics."""
    return {k: {m.step: m.value for m in client.get_metric_history(run_id, k)} for k in CURVE}


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def report(client, runs: list, every: int, split: str) -> str:
    out = []
    for run in runs:
        c = curves(client, run.info.run_id)
        epochs = sorted(c["val/t2v_R1"])
        shown = [e for e in epochs if e % every == every - 1 or e == epochs[-1]]
        rows = [["epoch", *CURVE]] + [[str(e + 1), *(f"{c[k].get(e, float('nan')):.1f}" for k in CURVE)] for e in shown]
        sampled = run.data.tags.get("etva.sampled", "")
        out.append(f"{run.info.run_name} {sampled} ({run.info.status})\n{table(rows)}")
        m = run.data.metrics
        test = ", ".join(f"{k} {m[f'{split}/{k}']:.1f}" for k in TEST if f"{split}/{k}" in m)
        videos = m.get(f"{split}/num_videos", float("nan"))
        out.append(f"  {split} at the selected epoch ({videos:.0f} videos, R@1 chance {100 / videos:.1f}): {test}")
    return "\n\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", required=True, help="the study's --name")
    ap.add_argument("--experiment", default="etva-study")
    ap.add_argument("--split", default="test")
    ap.add_argument("--every", type=int, default=5, help="print every N-th epoch (and the last)")
    args = ap.parse_args(argv)
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        ap.error("no MLFLOW_TRACKING_URI: source runs/local/env.sh")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(args.experiment)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`etva.sweep_name` = '{args.name}'")
    trials = sorted((r for r in runs if r.data.tags.get("etva.role") == "trial"), key=lambda r: r.info.run_name)
    if not trials:
        print(f"no trials of {args.name!r} in {args.experiment!r}", file=sys.stderr)
        return 1
    print(report(client, trials, args.every, args.split))
    return 0


if __name__ == "__main__":
    sys.exit(main())
