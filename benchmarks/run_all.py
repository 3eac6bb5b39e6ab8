"""Run every benchmark in sequence, each as its own process, and rewrite their section of RESULTS.md.

    python -m benchmarks.run_all --quick            # every benchmark's quick mode (~15 minutes on 2 cores)
    python -m benchmarks.run_all --quick --only bench_eval gpu_check
    python -m benchmarks.run_all                    # full defaults (hours: the ablation alone takes ~15 min)

Each benchmark runs as ``python -m benchmarks.<name> [--quick]`` in a new session (process group); when it
ends, anything left in that group (e.g. Ray processes of a crashed run) is stopped. Benchmarks that need
Ray (``bench_pipeline``, ``bench_ray_overhead``) start and stop a local instance themselves.

The section between ``<!-- run_all:begin -->`` and ``<!-- run_all:end -->`` of ``benchmarks/RESULTS.md``
(appended if absent) holds one entry per benchmark: the command, the date, the machine (CPU count and
model, RAM), the load average before and after, wall time, exit status, and the output. A run replaces the
entries of the benchmarks it ran (``--only`` keeps the others). Everything outside the markers is kept.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("RESULTS.md")
BEGIN, END = "<!-- run_all:begin -->", "<!-- run_all:end -->"
MAX_LINES = 60  # output lines kept per benchmark

# name -> extra arguments in quick mode (besides --quick)
BENCHMARKS: dict[str, list[str]] = {
    "bench_synth": [],
    "bench_decode": [],
    "bench_model": [],
    "bench_eval": [],
    "bench_pipeline": [],
    "bench_ray_overhead": [],
    "bench_data_start": [],
    "ablation": [],
    "bench_search": [],
    "bench_store_stream": [],
    "bench_serve": [],
    "bench_scaling": ["--png", "benchmarks/scaling_quick.png"],
    "gpu_check": ["--device", "cpu"],
}


@dataclass
class Run:
    name: str
    command: str
    started: str
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    wall_s: float
    returncode: int
    output: str


def machine() -> str:
    """CPU count and model, total RAM."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        kib = next(
            int(x.split()[1]) for x in Path("/proc/meminfo").read_text().splitlines() if "MemTotal" in x
        )
        ram = f"{kib / 2**20:.1f} GiB RAM"
    except (OSError, StopIteration):
        ram = "RAM unknown"
    return f"{os.cpu_count()} CPUs ({model}), {ram}"


def run_one(name: str, args: list[str], timeout_s: float) -> Run:
    """``python -m benchmarks.<name> *args`` in its own process group; stdout+stderr captured."""
    cmd = [sys.executable, "-m", f"benchmarks.{name}", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    before, t0 = os.getloadavg(), time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout_s)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate()
        out += f"\n[run_all] stopped after {timeout_s:.0f} s (time budget)"
        code = -1
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # leftovers of this benchmark only (its own group)
        except ProcessLookupError:
            pass
    shown = " ".join(["python", "-m", f"benchmarks.{name}", *args])
    return Run(name, shown, started, before, os.getloadavg(), time.perf_counter() - t0, code, out)


def _load(la: tuple[float, float, float]) -> str:
    return " / ".join(f"{x:.2f}" for x in la)


def entry(r: Run) -> str:
    """One benchmark's markdown: heading, command, date, machine, load, wall time, exit, output tail."""
    lines = r.output.rstrip().splitlines()
    cut = len(lines) > MAX_LINES
    body = "\n".join(lines[-MAX_LINES:]).replace("```", "'''")
    return "\n".join([
        f"### {r.name}",
        "",
        f"`{r.command}` — {r.started}; {machine()}; load average (1/5/15 min) {_load(r.load_before)} "
        f"before, {_load(r.load_after)} after; {r.wall_s:.0f} s, exit {r.returncode}",
        "",
        "```",
        ("[... earlier lines cut ...]\n" if cut else "") + body,
        "```",
        "",
    ])  # fmt: skip


def old_entries(text: str) -> dict[str, str]:
    """The entries of the marked section of ``text``, by benchmark name (empty if there is none)."""
    if BEGIN not in text or END not in text:
        return {}
    section = text.split(BEGIN, 1)[1].split(END, 1)[0]
    out = {}
    for chunk in section.split("\n### ")[1:]:
        name = chunk.split("\n", 1)[0].strip()
        out[name] = "### " + chunk.rstrip("\n") + "\n"
    return out


def render(entries: dict[str, str]) -> str:
    """The section: every benchmark's latest entry, in the order of BENCHMARKS."""
    names = [n for n in BENCHMARKS if n in entries] + [n for n in entries if n not in BENCHMARKS]
    intro = (
        "Written by `python -m benchmarks.run_all`; an entry is replaced when its benchmark runs again "
        "(`--only` runs a subset and keeps the other entries). Each gives its own date, machine and load."
    )
    head = [BEGIN, "## Quick runs of every benchmark (`python -m benchmarks.run_all --quick`)", "", intro, ""]
    return "\n".join(head + [entries[n] for n in names] + [END])


def rewrite_section(text: str, section: str) -> str:
    """``text`` with the marked section replaced by ``section`` (appended when there is none)."""
    if BEGIN in text and END in text and text.index(BEGIN) < text.index(END):
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        return head + section + tail
    return text.rstrip("\n") + "\n\n" + section + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="every benchmark's --quick mode")
    p.add_argument("--only", nargs="*", choices=list(BENCHMARKS), help="a subset, in the given order")
    p.add_argument("--budget-s", type=float, default=15 * 60, help="stop starting benchmarks after this")
    p.add_argument("--results", default=str(RESULTS), help="the markdown file to rewrite")
    args = p.parse_args()
    names = args.only or list(BENCHMARKS)
    t0, runs = time.perf_counter(), []
    for name in names:
        left = args.budget_s - (time.perf_counter() - t0)
        if left <= 10:
            print(f"[run_all] {name}: skipped, the {args.budget_s:.0f} s budget is spent", flush=True)
            continue
        extra = (["--quick"] + BENCHMARKS[name]) if args.quick else []
        print(f"[run_all] {name} ...", flush=True)
        r = run_one(name, extra, left)
        runs.append(r)
        print(f"[run_all] {name}: exit {r.returncode}, {r.wall_s:.0f} s", flush=True)
    total = time.perf_counter() - t0
    path = Path(args.results)
    text = path.read_text() if path.exists() else ""
    entries = {**old_entries(text), **{r.name: entry(r) for r in runs}}
    path.write_text(rewrite_section(text, render(entries)))
    failed = [r.name for r in runs if r.returncode != 0]
    print(f"[run_all] {len(runs)} run, {total:.0f} s, failed: {failed or 'none'}; wrote {path}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
