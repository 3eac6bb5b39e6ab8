"""The answer of a study, written into its MLflow parent run: table, paired comparison, picture.

From the trials' child runs (``tuning.study``): per variant, mean +- std and the 95% Student-t interval
over seeds of the test split's R@1/5/10 and MdR in both directions; per variant against the reference,
a paired bootstrap of text->video R@1 over the test queries pooled across the seeds both ran (queries
resampled by video: a video's captions are not independent; ``etva.eval.stats``); one picture (R@1 per
variant, interval bars, seeds as dots). Artifacts ``study_table.md``, ``study_summary.json``,
``study_r1.png``; the table is also the parent run's description.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from etva.eval.stats import Interval, PairedTest, hits_at_k, paired_bootstrap, t_interval

logger = logging.getLogger(__name__)

METRICS = ("t2v_R1", "t2v_R5", "t2v_R10", "t2v_MdR", "v2t_R1", "v2t_R5", "v2t_R10", "v2t_MdR")


@dataclass(frozen=True)
class Trial:
    variant: str
    seed: int
    run_id: str
    status: str
    metrics: dict  # test metrics without the split prefix (empty if the trial did not report)


def collect(client, exp_id: str, parent_id: str, split: str) -> list[Trial]:
    """Every trial (child run) of the study with its variant, seed and test metrics."""
    from tuning.mlflow_sweep import child_runs
    from tuning.study import VARIANT_KEY

    out = []
    for run in child_runs(client, exp_id, parent_id):
        sampled = json.loads(run.data.tags.get("etva.sampled", "{}"))
        m = {k: run.data.metrics[f"{split}/{k}"] for k in METRICS if f"{split}/{k}" in run.data.metrics}
        out.append(Trial(sampled.get(VARIANT_KEY, "?"), int(sampled.get("train.seed", -1)), run.info.run_id,
                         run.info.status, m))  # fmt: skip
    return sorted(out, key=lambda t: (t.variant, t.seed))


def variant_table(trials: list[Trial], variants: list[str]) -> dict[str, dict[str, Interval]]:
    """Per variant (with at least one finished trial) and metric: the interval over its seeds."""
    table: dict[str, dict[str, Interval]] = {}
    for v in variants:
        done = [t for t in trials if t.variant == v and "t2v_R1" in t.metrics]
        if done:
            table[v] = {m: t_interval([t.metrics[m] for t in done]) for m in METRICS if m in done[0].metrics}
    return table


def _hits(client, run_id: str, k: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(caption_index, video_index, 100 * P(rank < k)) per test query of one trial."""
    from tuning.study import RANKS_ARTIFACT

    with tempfile.TemporaryDirectory() as d:
        data = json.loads(Path(client.download_artifacts(run_id, RANKS_ARTIFACT, d)).read_text())
    return np.array(data["caption_index"]), np.array(data["video_index"]), hits_at_k(data["t2v_h"], data["t2v_e"], k)


def paired_tests(client, trials: list[Trial], reference: str, variants: list[str]) -> dict[str, PairedTest]:
    """Each variant against ``reference`` on their common finished seeds and the same test queries."""
    done = {(t.variant, t.seed): t for t in trials if "t2v_R1" in t.metrics}
    out: dict[str, PairedTest] = {}
    for v in variants:
        seeds = sorted(s for (var, s) in done if var == v and (reference, s) in done)
        if v == reference or not seeds:
            continue
        a, b, videos = [], [], None
        for s in seeds:
            cap_a, vid, hit_a = _hits(client, done[(v, s)].run_id)
            cap_b, _, hit_b = _hits(client, done[(reference, s)].run_id)
            if not np.array_equal(cap_a, cap_b):
                raise ValueError(f"study: trials of {v!r} and {reference!r} (seed {s}) scored different test queries")
            a.append(hit_a)
            b.append(hit_b)
            videos = vid
        out[v] = paired_bootstrap(np.stack(a), np.stack(b), clusters=videos)
    return out


def _cell(iv: Interval | None) -> str:
    if iv is None:
        return "-"
    if iv.n < 2:  # one seed: no spread, no interval
        return f"{iv.mean:.1f} (1 seed)"
    return f"{iv.mean:.1f} ± {iv.std:.1f} [{iv.low:.1f}, {iv.high:.1f}]"


def _overlap(a: Interval, b: Interval) -> str:
    return "n/a (1 seed)" if min(a.n, b.n) < 2 else ("yes" if a.overlaps(b) else "no")


def to_markdown(table, tests, reference: str, variants: list[str], paper: dict[str, float]) -> str:
    """The study's tables: both directions with intervals, then the paired comparison."""
    lines = []
    for d, title in (("t2v", "text->video"), ("v2t", "video->text")):
        cols = [f"{d}_{c}" for c in ("R1", "R5", "R10", "MdR")]
        lines += [f"**{title}** (test split; mean ± std over seeds [95% t-interval])", "",
                  "| variant | seeds | " + " | ".join(c.split("_")[1] for c in cols)
                  + (" | paper t2v R@1 (MSRVTT 1k-A, reported) |" if d == "t2v" else " |"),
                  "|---|---|" + "---|" * (len(cols) + (d == "t2v"))]  # fmt: skip
        for v in variants:
            row = table.get(v, {})
            n = row["t2v_R1"].n if row else 0
            cells = [_cell(row.get(c)) for c in cols]
            extra = [f"{paper[v]:.1f}" if v in paper else "-"] if d == "t2v" else []
            lines.append(f"| {v} | {n} | " + " | ".join(cells + extra) + " |")
        lines.append("")
    lines += [f"**paired vs {reference}** (t2v R@1 difference variant − {reference}, points; bootstrap over "
              "test queries pooled across common seeds, resampled by video)", "",
              "| variant | seeds | queries | diff | 95% interval | p (two-sided) | seed intervals overlap |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for v, t in tests.items():
        overlap = _overlap(table[v]["t2v_R1"], table[reference]["t2v_R1"])
        lines.append(f"| {v} | {t.num_seeds} | {t.num_queries} | {t.diff:+.2f} | [{t.low:+.2f}, {t.high:+.2f}] | "
                     f"{t.p_value:.4f} | {overlap} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(trials: list[Trial], table, variants: list[str], paper: dict[str, float], path: str) -> bool:
    """Test t2v R@1 per variant: mean with its 95% interval, every seed as a dot. False if nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [v for v in variants if v in table]
    if not shown:
        return False
    fig, ax = plt.subplots(figsize=(1.6 * len(shown) + 2, 3.8))
    for x, v in enumerate(shown):
        ys = [t.metrics["t2v_R1"] for t in trials if t.variant == v and "t2v_R1" in t.metrics]
        ax.scatter(np.full(len(ys), x) + np.linspace(-0.12, 0.12, len(ys)), ys, s=14, c="tab:gray", zorder=2)
        iv = table[v]["t2v_R1"]
        ax.errorbar([x], [iv.mean], yerr=[[iv.mean - iv.low], [iv.high - iv.mean]], fmt="o", color="tab:blue",
                    capsize=5, zorder=3)  # fmt: skip
    labels = [v + (f"\n(paper {paper[v]:.1f})" if v in paper else "") for v in shown]
    ax.set_xticks(range(len(shown)), labels, fontsize=8)
    ax.set_ylabel("test t2v R@1 (%)")
    ax.set_title("mean and 95% interval over seeds (dots: seeds)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def report_study(client, exp_id: str, parent_id: str, space, split: str, name: str, seconds: float) -> str:
    """Compute the study's answer and log it to the parent run; returns the markdown."""
    from ray_jobs.run_record import NOTE
    from ray_jobs.tracking import log_metrics, log_text

    variants = list(space.variants)
    trials = collect(client, exp_id, parent_id, split)
    table = variant_table(trials, variants)
    tests = paired_tests(client, trials, space.reference, variants) if space.reference in table else {}
    done = sum("t2v_R1" in t.metrics for t in trials)
    head = f"### study {name}: {done} of {len(variants) * len(space.seeds)} trials reported '{split}' ({seconds:.0f} s)\n\n"
    text = head + to_markdown(table, tests, space.reference, variants, space.paper)
    log_text(client, parent_id, text, "study_table.md")
    summary = {"variants": {v: {m: asdict(iv) for m, iv in row.items()} for v, row in table.items()},
               "paired": {v: asdict(t) for v, t in tests.items()}, "reference": space.reference,
               "trials": [asdict(t) for t in trials], "paper_t2v_R1": space.paper}  # fmt: skip
    log_text(client, parent_id, json.dumps(summary, indent=1), "study_summary.json")
    with tempfile.TemporaryDirectory() as d:
        png = str(Path(d) / "study_r1.png")
        if plot(trials, table, variants, space.paper, png):
            client.log_artifact(parent_id, png)
    metrics = {f"study/{v}/t2v_R1_mean": row["t2v_R1"].mean for v, row in table.items()}
    metrics.update({f"study/{v}/t2v_R1_diff_vs_reference": t.diff for v, t in tests.items()})
    metrics.update({f"study/{v}/t2v_R1_p_vs_reference": t.p_value for v, t in tests.items()})
    log_metrics(client, parent_id, {k: v for k, v in metrics.items() if not math.isnan(v)})
    client.set_tag(parent_id, NOTE, text)
    return text
