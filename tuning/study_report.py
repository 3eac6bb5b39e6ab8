"""The answer of a study, written into its MLflow parent run: tables, paired comparison, picture.

From the trials' child runs (``tuning.study``): per variant, mean +- std and the 95% Student-t interval
over seeds of the test split's R@1/5/10 and MdR in both directions, and of the binding metric where the
trials report it (the compositional benchmark: group R@1 and pairwise binding accuracy per kind,
``etva.eval.binding``); intervals are cut to what the metric can be (R@K and accuracies in [0, 100]).
Per variant against the reference, on text->video R@1 and on group R@1: the paired difference over the
seeds both ran and the same test queries, with the hierarchical interval (seeds and test videos resampled,
small-sample corrected: ``etva.eval.stats.hierarchical_bootstrap``) and, beside it, the Student-t interval
of the per-seed differences. One picture: a panel per metric (R@1, group R@1, pairwise accuracy per kind),
mean with interval bars, seeds as dots, chance as a dashed line. Artifacts ``study_table.md``,
``study_summary.json``, ``study_r1.png``; the table is also the parent run's description.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from etva.eval.binding import KINDS
from etva.eval.stats import HierarchicalTest, Interval, hierarchical_bootstrap, hits_at_k, t_interval
from ray_jobs.run_record import NOTE
from ray_jobs.tracking import log_metrics, log_text
from ray_jobs.train import RANKS_ARTIFACT
from tuning.mlflow_sweep import child_runs
from tuning.space import VARIANT_KEY

logger = logging.getLogger(__name__)

METRICS = ("t2v_R1", "t2v_R5", "t2v_R10", "t2v_MdR", "v2t_R1", "v2t_R5", "v2t_R10", "v2t_MdR")
BINDING = ("group_R1", "pair_acc", *(f"pair_acc_{k}" for k in KINDS))
EXTRA = ("num_videos", "group_R1_chance")  # read from the trials to draw the chance levels
PAIRED = ("t2v_R1", "group_R1")  # the metrics compared with the reference query by query
PERCENT = (0.0, 100.0)


@dataclass(frozen=True)
class Trial:
    variant: str
    seed: int
    run_id: str
    status: str
    metrics: dict  # test metrics without the split prefix (empty if the trial did not report)


def collect(client, exp_id: str, parent_id: str, split: str) -> list[Trial]:
    """Every trial (child run) of the study with its variant, seed and test metrics."""
    keys = (*METRICS, *BINDING, *EXTRA)
    out = []
    for run in child_runs(client, exp_id, parent_id):
        sampled = json.loads(run.data.tags.get("etva.sampled", "{}"))
        m = {k: run.data.metrics[f"{split}/{k}"] for k in keys if f"{split}/{k}" in run.data.metrics}
        out.append(Trial(sampled.get(VARIANT_KEY, "?"), int(sampled.get("train.seed", -1)), run.info.run_id,
                         run.info.status, m))  # fmt: skip
    return sorted(out, key=lambda t: (t.variant, t.seed))


def _bounds(metric: str) -> tuple[float, float]:
    return (1.0, math.inf) if metric.endswith("MdR") else PERCENT


def variant_table(trials: list[Trial], variants: list[str]) -> dict[str, dict[str, Interval]]:
    """Per variant (with at least one finished trial) and metric: the interval over its seeds, cut to the
    metric's range."""
    table: dict[str, dict[str, Interval]] = {}
    for v in variants:
        done = [t for t in trials if t.variant == v and "t2v_R1" in t.metrics]
        if done:
            present = [m for m in (*METRICS, *BINDING) if all(m in t.metrics for t in done)]
            table[v] = {m: t_interval([t.metrics[m] for t in done], bounds=_bounds(m)) for m in present}
    return table


def chance_levels(trials: list[Trial]) -> dict[str, float]:
    """Chance of each pictured metric on the test split: R@1 = 100 / videos, group R@1 as logged
    (100 / group size, averaged over the captions), pairwise accuracy 50."""
    done = [t for t in trials if "t2v_R1" in t.metrics]
    out: dict[str, float] = {}
    if done and all("num_videos" in t.metrics for t in done):
        out["t2v_R1"] = 100.0 / float(np.mean([t.metrics["num_videos"] for t in done]))
    if done and all("group_R1_chance" in t.metrics for t in done):
        out["group_R1"] = float(np.mean([t.metrics["group_R1_chance"] for t in done]))
    out["pair_acc"] = 50.0
    return out


def _outcomes(client, run_id: str) -> dict[str, np.ndarray]:
    """Per test query of one trial: caption and video index, and the outcome (percent) of each metric in
    :data:`PAIRED` it logged (``group_R1``: NaN where the caption's group has one scored video)."""
    with tempfile.TemporaryDirectory() as d:
        data = json.loads(Path(client.download_artifacts(run_id, RANKS_ARTIFACT, d)).read_text())
    out = {
        "caption_index": np.array(data["caption_index"]),
        "video_index": np.array(data["video_index"]),
        "t2v_R1": hits_at_k(data["t2v_h"], data["t2v_e"], 1),
    }
    if "group_h" in data:
        counted = np.array(data["group_size"]) >= 2
        out["group_R1"] = np.where(counted, hits_at_k(data["group_h"], data["group_e"], 1), np.nan)
    return out


def load_outcomes(client, trials: list[Trial]) -> dict[tuple[str, int], dict[str, np.ndarray]]:
    """:func:`_outcomes` of every finished trial, by (variant, seed)."""
    return {(t.variant, t.seed): _outcomes(client, t.run_id) for t in trials if "t2v_R1" in t.metrics}


def paired_tests(
    outcomes: dict[tuple[str, int], dict[str, np.ndarray]], reference: str, variants: list[str], metric: str
) -> dict[str, HierarchicalTest]:
    """Each variant against ``reference`` on ``metric``, on their common seeds and the same test queries
    (for group R@1, the queries both counted), resampled by seed and by test video."""
    out: dict[str, HierarchicalTest] = {}
    for v in variants:
        seeds = sorted(s for (var, s) in outcomes if var == v and (reference, s) in outcomes)
        seeds = [s for s in seeds if metric in outcomes[(v, s)] and metric in outcomes[(reference, s)]]
        if v == reference or not seeds:
            continue
        a, b = [], []
        for s in seeds:
            oa, ob = outcomes[(v, s)], outcomes[(reference, s)]
            if not np.array_equal(oa["caption_index"], ob["caption_index"]):
                raise ValueError(
                    f"study: trials of {v!r} and {reference!r} (seed {s}) scored different test queries"
                )
            a.append(oa[metric])
            b.append(ob[metric])
        a2, b2 = np.stack(a), np.stack(b)
        keep = ~(np.isnan(a2).any(axis=0) | np.isnan(b2).any(axis=0))
        if keep.any():
            videos = outcomes[(v, seeds[0])]["video_index"][keep]
            out[v] = hierarchical_bootstrap(a2[:, keep], b2[:, keep], clusters=videos)
    return out


def seed_differences(
    trials: list[Trial], reference: str, variants: list[str], metric: str
) -> dict[str, Interval]:
    """Each variant minus ``reference`` per common seed: the Student-t interval of those differences."""
    done = {(t.variant, t.seed): t.metrics[metric] for t in trials if metric in t.metrics}
    out = {}
    for v in variants:
        diffs = [
            done[(v, s)] - done[(reference, s)] for (var, s) in done if var == v and (reference, s) in done
        ]
        if v != reference and diffs:
            out[v] = t_interval(diffs, bounds=(-100.0, 100.0))
    return out


def _cell(iv: Interval | None) -> str:
    if iv is None:
        return "-"
    if iv.n < 2:  # one seed: no spread, no interval
        return f"{iv.mean:.1f} (1 seed)"
    return f"{iv.mean:.1f} ± {iv.std:.1f} [{iv.low:.1f}, {iv.high:.1f}]"


def _overlap(a: Interval, b: Interval) -> str:
    return "n/a (1 seed)" if min(a.n, b.n) < 2 else ("yes" if a.overlaps(b) else "no")


def _retrieval_lines(table, variants: list[str], paper: dict[str, float]) -> list[str]:
    lines = []
    for d, title in (("t2v", "text->video"), ("v2t", "video->text")):
        cols = [f"{d}_{c}" for c in ("R1", "R5", "R10", "MdR")]
        paper_col = " | paper t2v R@1 (MSRVTT 1k-A, reported) |" if d == "t2v" else " |"
        lines += [
            f"**{title}** (test split; mean ± std over seeds [95% t-interval])",
            "",
            "| variant | seeds | " + " | ".join(c.split("_")[1] for c in cols) + paper_col,
            "|---|---|" + "---|" * (len(cols) + (d == "t2v")),
        ]
        for v in variants:
            row = table.get(v, {})
            n = row["t2v_R1"].n if row else 0
            cells = [_cell(row.get(c)) for c in cols]
            extra = [f"{paper[v]:.1f}" if v in paper else "-"] if d == "t2v" else []
            lines.append(f"| {v} | {n} | " + " | ".join(cells + extra) + " |")
        lines.append("")
    return lines


def _binding_lines(table, variants: list[str], chance: dict[str, float]) -> list[str]:
    """The binding table, when any variant reports group R@1."""
    if not any("group_R1" in row for row in table.values()):
        return []
    names = ["group R@1", "pairwise (all)", *(f"pairwise {k}" for k in KINDS)]
    group_chance = f"{chance['group_R1']:.1f}" if "group_R1" in chance else "1/group size"
    lines = [
        f"**binding** (test split, text->video; mean ± std over seeds [95% t-interval]; chance: group R@1 "
        f"{group_chance}, pairwise 50.0)",
        "",
        "| variant | seeds | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for v in variants:
        row = table.get(v, {})
        n = row["t2v_R1"].n if row else 0
        lines.append(f"| {v} | {n} | " + " | ".join(_cell(row.get(m)) for m in BINDING) + " |")
    return lines + [""]


def _paired_lines(
    table, tests, reference: str, metric: str, seed_diffs: dict[str, Interval] | None
) -> list[str]:
    name = {"t2v_R1": "t2v R@1", "group_R1": "group R@1"}[metric]
    title = f"**paired vs {reference}**" + ("" if metric == "t2v_R1" else f" **on {name}**")
    lines = [
        f"{title} ({name} difference variant − {reference}, points; 95% interval over seeds and test videos: "
        "hierarchical bootstrap, seeds then videos, studentized for few seeds; beside it the t-interval of "
        "the per-seed differences)",
        "",
        "| variant | seeds | queries | diff | 95% interval | p (two-sided) | 95% t-interval over seeds "
        "| seed intervals overlap |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v, t in tests.items():
        sd = (seed_diffs or {}).get(v)
        per_seed = "-" if sd is None or sd.n < 2 else f"[{sd.low:+.2f}, {sd.high:+.2f}]"
        have = metric in table.get(v, {}) and metric in table.get(reference, {})
        overlap = _overlap(table[v][metric], table[reference][metric]) if have else "-"
        interval = f"[{t.low:+.2f}, {t.high:+.2f}]"
        cells = [
            v,
            t.num_seeds,
            t.num_queries,
            f"{t.diff:+.2f}",
            interval,
            f"{t.p_value:.4f}",
            per_seed,
            overlap,
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return lines + [""]


def to_markdown(
    table,
    tests,
    reference: str,
    variants: list[str],
    paper: dict[str, float],
    group_tests=None,
    seed_diffs: dict[str, dict[str, Interval]] | None = None,
    chance: dict[str, float] | None = None,
) -> str:
    """The study's tables: both directions with intervals, the binding table (when reported), then the
    paired comparisons on t2v R@1 (``tests``) and on group R@1 (``group_tests``); ``seed_diffs``:
    ``{metric: {variant: t-interval of the per-seed differences}}``."""
    seed_diffs = seed_diffs or {}
    lines = _retrieval_lines(table, variants, paper) + _binding_lines(table, variants, chance or {})
    lines += _paired_lines(table, tests, reference, "t2v_R1", seed_diffs.get("t2v_R1"))
    if group_tests:
        lines += _paired_lines(table, group_tests, reference, "group_R1", seed_diffs.get("group_R1"))
    return "\n".join(lines[:-1]) + "\n"


def _panel(
    ax, trials: list[Trial], table, shown: list[str], metric: str, offset: float = 0.0, **style
) -> None:
    """Seeds as dots, mean and interval as a bar (cut to the metric's range), at x = variant + offset."""
    label = style.pop("label", None)  # one legend entry per panel series
    for x, v in enumerate(shown):
        if metric not in table[v]:
            continue
        ys = [t.metrics[metric] for t in trials if t.variant == v and metric in t.metrics]
        xs = np.full(len(ys), x + offset) + np.linspace(-0.06, 0.06, len(ys))
        ax.scatter(xs, ys, s=10, c="tab:gray", zorder=2)
        iv = table[v][metric]
        yerr = [[iv.mean - iv.low], [iv.high - iv.mean]]
        ax.errorbar([x + offset], [iv.mean], yerr=yerr, fmt="o", capsize=4, zorder=3, label=label, **style)
        label = None


def plot(
    trials: list[Trial], table, variants: list[str], paper: dict[str, float], path: str, chance=None
) -> bool:
    """Test t2v R@1 per variant (mean, 95% interval, seeds as dots, chance as a dashed line), plus group R@1
    and pairwise accuracy per kind when the trials report them. False if nothing to plot."""
    import matplotlib  # lazy: matplotlib's import is slow and only the report draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [v for v in variants if v in table]
    if not shown:
        return False
    chance = chance if chance is not None else chance_levels(trials)
    panels = ["t2v_R1"] + [m for m in ("group_R1", "pair_acc") if any(m in table[v] for v in shown)]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(len(panels) * (1.5 * len(shown) + 1.5), 3.8), squeeze=False
    )
    titles = {"t2v_R1": "test t2v R@1 (%)", "group_R1": "group R@1 (%)", "pair_acc": "pairwise accuracy (%)"}
    for ax, metric in zip(axes[0], panels):
        if metric == "pair_acc":
            kinds = [k for k in KINDS if any(f"pair_acc_{k}" in table[v] for v in shown)]
            for i, k in enumerate(kinds):
                off = (i - (len(kinds) - 1) / 2) * 0.18
                _panel(ax, trials, table, shown, f"pair_acc_{k}", off, color=f"C{i}", label=k)
            ax.legend(fontsize=7, loc="best")
        else:
            _panel(ax, trials, table, shown, metric, color="tab:blue")
        if metric in chance:
            ax.axhline(chance[metric], ls="--", color="tab:red", lw=1, label="chance", zorder=1)
            where = (0.01, chance[metric])
            note = f"chance {chance[metric]:.1f}"
            ax.annotate(
                note, where, xycoords=("axes fraction", "data"), fontsize=7, color="tab:red", va="bottom"
            )
        labels = [
            v + (f"\n(paper {paper[v]:.1f})" if v in paper and metric == "t2v_R1" else "") for v in shown
        ]
        ax.set_xticks(range(len(shown)), labels, fontsize=8)
        ax.set_ylabel(titles[metric])
        ax.set_ylim(bottom=0.0, top=min(100.0, ax.get_ylim()[1]))
        ax.grid(alpha=0.3)
    fig.suptitle("mean and 95% interval over seeds (dots: seeds; dashed: chance)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _summary(table, tests: dict, seed_diffs: dict, trials: list[Trial], space, chance: dict) -> dict:
    return {
        "variants": {v: {m: asdict(iv) for m, iv in row.items()} for v, row in table.items()},
        "paired": {v: asdict(t) for v, t in tests.get("t2v_R1", {}).items()},
        "paired_group_R1": {v: asdict(t) for v, t in tests.get("group_R1", {}).items()},
        "seed_differences": {m: {v: asdict(iv) for v, iv in d.items()} for m, d in seed_diffs.items()},
        "reference": space.reference,
        "chance": chance,
        "trials": [asdict(t) for t in trials],
        "paper_t2v_R1": space.paper,
    }


def _parent_metrics(table, tests: dict) -> dict[str, float]:
    """``study/<variant>/<metric>_mean`` and, per paired metric, ``_diff_vs_reference`` / ``_p_vs_reference``."""
    out = {
        f"study/{v}/{m}_mean": row[m].mean
        for v, row in table.items()
        for m in ("t2v_R1", *BINDING)
        if m in row
    }
    for m, ts in tests.items():
        out.update({f"study/{v}/{m}_diff_vs_reference": t.diff for v, t in ts.items()})
        out.update({f"study/{v}/{m}_p_vs_reference": t.p_value for v, t in ts.items()})
    return {k: v for k, v in out.items() if not math.isnan(v)}


def report_study(client, exp_id: str, parent_id: str, space, split: str, name: str, seconds: float) -> str:
    """Compute the study's answer and log it to the parent run; returns the markdown."""
    variants = list(space.variants)
    trials = collect(client, exp_id, parent_id, split)
    table = variant_table(trials, variants)
    outcomes = load_outcomes(client, trials) if space.reference in table else {}
    tests = {m: paired_tests(outcomes, space.reference, variants, m) for m in PAIRED}
    tests = {m: ts for m, ts in tests.items() if ts}
    seed_diffs = {m: seed_differences(trials, space.reference, variants, m) for m in PAIRED}
    chance = chance_levels(trials)
    done = sum("t2v_R1" in t.metrics for t in trials)
    head = f"### study {name}: {done} of {len(variants) * len(space.seeds)} trials reported '{split}' ({seconds:.0f} s)\n\n"
    paired = tests.get("t2v_R1", {})
    body = to_markdown(
        table, paired, space.reference, variants, space.paper, tests.get("group_R1"), seed_diffs, chance
    )
    text = head + body
    log_text(client, parent_id, text, "study_table.md")
    summary = _summary(table, tests, seed_diffs, trials, space, chance)
    log_text(client, parent_id, json.dumps(summary, indent=1), "study_summary.json")
    with tempfile.TemporaryDirectory() as d:
        png = str(Path(d) / "study_r1.png")
        if plot(trials, table, variants, space.paper, png, chance):
            client.log_artifact(parent_id, png)
    log_metrics(client, parent_id, _parent_metrics(table, tests))
    client.set_tag(parent_id, NOTE, text)
    return text
