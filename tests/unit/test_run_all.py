"""benchmarks.run_all: rewrites only its own section of the results file, with date, machine and load."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from benchmarks.run_all import BEGIN, BENCHMARKS, END, rewrite_section

REPO = Path(__file__).resolve().parents[2]


def test_rewrite_replaces_only_the_marked_section():
    text = f"# Results\n\nkept above\n\n{BEGIN}\nold figures\n{END}\n\nkept below\n"
    out = rewrite_section(text, f"{BEGIN}\nnew figures\n{END}")
    assert out == f"# Results\n\nkept above\n\n{BEGIN}\nnew figures\n{END}\n\nkept below\n"


def test_rewrite_appends_when_there_is_no_section():
    out = rewrite_section("# Results\n\nhand-written\n", f"{BEGIN}\nx\n{END}")
    assert out == f"# Results\n\nhand-written\n\n{BEGIN}\nx\n{END}\n"


def test_every_benchmark_module_exists_and_has_a_quick_mode():
    for name in BENCHMARKS:
        src = (REPO / "benchmarks" / f"{name}.py").read_text()
        assert f"python -m benchmarks.{name}" in src, name  # the one documented form
        assert '"--quick"' in src, name


GPU_CHECKS = [
    "train step fp32",
    "train step bf16 autocast",
    "bf16 / fp32 speed",
    "GEMM peak fp32",
    "GEMM peak bf16",
    "eval end to end (engine.evaluate)",
    "encode captions + videos",
    "FusedScorer GEMMs",
    "score_all (+ copy to host)",
    "retrieval_metrics (chunked)",
    "resume: etva.train.state.build_training",
    "resume: load, then to(device) (contrast)",
]


def test_run_all_writes_an_entry_with_machine_and_load(tmp_path):
    """run_all with gpu_check's quick CPU mode: the entry, and gpu_check's one full table in it."""
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\nhand-written table\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.run_all",
        "--quick",
        "--only",
        "gpu_check",
        "--results",
        str(results),
    ]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    text = results.read_text()
    assert text.startswith("# Results\n\nhand-written table\n")
    assert "### gpu_check" in text and "`python -m benchmarks.gpu_check --quick --device cpu`" in text
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC; \d+ CPUs .*GiB RAM; load average", text)
    assert text.rstrip().endswith(END)
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert [line.split("|")[1].strip() for line in table[2:]] == GPU_CHECKS
    assert "metrics equal to the engine's" in text
    assert "steps/s" in text and "TFLOP/s" in text


def test_a_partial_run_keeps_the_other_entries():
    from benchmarks.run_all import Run, entry, old_entries, render

    def run(name: str, out: str) -> Run:
        return Run(
            name,
            f"python -m benchmarks.{name} --quick",
            "2030-01-01 00:00 UTC",
            (1, 1, 1),
            (2, 2, 2),
            3.0,
            0,
            out,
        )

    first = rewrite_section("# R\n", render({"bench_eval": entry(run("bench_eval", "old eval")),
                                            "gpu_check": entry(run("gpu_check", "old gpu"))}))  # fmt: skip
    second = rewrite_section(
        first, render({**old_entries(first), "gpu_check": entry(run("gpu_check", "new gpu"))})
    )
    assert "old eval" in second and "new gpu" in second and "old gpu" not in second
    assert second.index("### bench_eval") < second.index("### gpu_check")  # BENCHMARKS order
    assert second.count(BEGIN) == 1 and second.count(END) == 1
