"""`etva best`: run ranking and the lazily imported command (tuning.best)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_best_run_ranking_breaks_ties_by_mdr(make_run):
    from tuning.best import _sort_key

    runs = [make_run("a", 50.0, 2.0, {}), make_run("b", 50.0, 1.5, {}), make_run("c", 70.0, 3.0, {})]
    for r, t in zip(runs, (3, 2, 1)):
        r.info.start_time = t
    assert [r.info.run_name for r in sorted(runs, key=_sort_key)] == ["c", "b", "a"]


def test_etva_best_command_is_registered_and_lazy():
    import subprocess
    import sys

    code = (
        "import sys; from etva.cli import build_parser; p = build_parser();"
        "a = p.parse_args(['best', '--experiment', 'x', '--top', '3']);"
        "print(a.experiment, a.top, 'mlflow' in sys.modules, 'ray' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert out.stdout.split() == ["x", "3", "False", "False"], out.stderr


def test_etva_best_needs_an_experiment_or_a_run(capsys):
    from etva.cli import main

    assert main(["best"]) == 2
    assert "--experiment" in capsys.readouterr().err


def test_etva_best_parses_run_id_and_dry_run():
    from etva.cli import build_parser

    a = build_parser().parse_args(["best", "--run-id", "abc", "--dry-run"])
    assert (a.experiment, a.run_id, a.dry_run) == ("", "abc", True)
