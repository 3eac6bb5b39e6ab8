"""Layering of the packages, checked on the parsed source (ast) of every module.

    etva/            the pure library: nothing from ray, mlflow, ray_jobs or tuning;
    etva/cli/        the command line: the same, except its one seam module (etva/cli/seam.py);
    ray_jobs/        the Ray/MLflow jobs: may import etva, not tuning;
    tuning/          the sweeps: may import etva and ray_jobs;
    everything       never imports benchmarks or tests.

Imports are collected from ``import x``, ``from x import y`` (relative ones resolved), and the string
arguments of ``importlib.import_module("x")`` / ``import_module("x")`` / ``__import__("x")``, at any depth
(inside functions too). A dynamic import whose name is not a string literal is reported as well, since its
target cannot be checked.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("etva", "ray_jobs", "tuning")
SEAM = "etva/cli/seam.py"
JOB_LAYER = {"ray", "mlflow", "ray_jobs", "tuning"}
NEVER = {"benchmarks", "tests"}
DYNAMIC = "<dynamic>"  # an import_module/__import__ call whose argument is not a string literal


def _module_name(rel: str) -> str:
    parts = rel.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(rel: str, node: ast.ImportFrom) -> str:
    """The absolute module of ``from <node.module> import ...`` in the file ``rel``."""
    if not node.level:
        return node.module or ""
    package = _module_name(rel).split(".")
    if not rel.endswith("__init__.py"):
        package = package[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _import_functions(tree: ast.AST) -> set[str]:
    """Names that call the import machinery: ``__import__``, ``import_module`` and its aliases."""
    names = {"__import__", "import_module"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "importlib":
            names |= {a.asname or a.name for a in node.names if a.name in ("import_module", "__import__")}
    return names


def _dynamic_target(node: ast.Call, functions: set[str]) -> str | None:
    """The imported name of ``importlib.import_module(...)`` / ``__import__(...)``, else None."""
    func = node.func
    if isinstance(func, ast.Attribute):
        hit = func.attr in ("import_module", "__import__")
    else:
        hit = isinstance(func, ast.Name) and func.id in functions
    if not hit:
        return None
    if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
        return node.args[0].value
    return DYNAMIC


def imports_of(source: str, rel: str) -> list[tuple[int, str]]:
    """(line, imported module) for every import in ``source``, the text of the file ``rel`` of the repo."""
    found: list[tuple[int, str]] = []
    tree = ast.parse(source, filename=rel)
    functions = _import_functions(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, _resolve(rel, node)))
        elif isinstance(node, ast.Call) and (target := _dynamic_target(node, functions)) is not None:
            found.append((node.lineno, target))
    return found


def forbidden_for(rel: str) -> set[str]:
    """Top-level packages the file ``rel`` (a path relative to the repo) must not import."""
    top = rel.split("/")[0]
    if top == "etva":
        return NEVER if rel == SEAM else NEVER | JOB_LAYER
    if top == "ray_jobs":
        return NEVER | {"tuning"}
    return set(NEVER)


def violations(source: str, rel: str) -> list[str]:
    """``rel:line imports x`` for every import of ``source`` that its layer forbids."""
    bad = forbidden_for(rel)
    out = []
    for line, module in imports_of(source, rel):
        if module == DYNAMIC or module.split(".")[0] in bad:
            out.append(f"{rel}:{line} imports {module}")
    return out


def _modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def test_every_module_keeps_its_layer():
    files = _modules()
    assert len(files) > 30 and (REPO / SEAM).is_file()  # the walk found the packages
    found = [v for p in files for v in violations(p.read_text(encoding="utf-8"), str(p.relative_to(REPO)))]
    assert not found, "layering violations:\n" + "\n".join(found)


def test_the_seam_is_the_only_way_from_etva_to_the_job_layer():
    seam = {m.split(".")[0] for _, m in imports_of((REPO / SEAM).read_text(), SEAM)}
    assert {"ray_jobs", "tuning"} <= seam  # the seam really is where the CLI reaches the jobs


@pytest.mark.parametrize(
    "rel, source, reported",
    [
        ("etva/data/x.py", 'import importlib\nimportlib.import_module("ray_jobs.train")\n', "ray_jobs.train"),
        ("etva/data/x.py", 'def f():\n    __import__("mlflow")\n', "mlflow"),
        ("etva/data/x.py", "from importlib import import_module as im\nim(NAME)\n", None),
        ("etva/model/x.py", "def f():\n    import ray.train\n", "ray.train"),
        ("etva/cli/jobs.py", "from tuning.space import load_space\n", "tuning.space"),
        ("etva/cli/x.py", "from ..search import x\nimport tuning.space\n", "tuning.space"),
        ("ray_jobs/x.py", "from tuning import best\n", "tuning"),
        ("tuning/x.py", "import benchmarks.bench_synth\n", "benchmarks.bench_synth"),
        ("etva/x.py", "from tests.unit import helpers\n", "tests.unit"),
    ],
)
def test_the_checker_reports_a_wrong_import(rel, source, reported):
    found = violations(source, rel)
    assert len(found) == 1, found
    assert found[0].endswith(f" imports {reported or DYNAMIC}"), found


@pytest.mark.parametrize(
    "rel, source",
    [
        ("etva/cli/seam.py", "def f():\n    from tuning.best import main\n    import ray_jobs.evaluate\n"),
        ("ray_jobs/x.py", "import ray\nimport mlflow\nfrom etva.model import build_model\n"),
        ("tuning/x.py", "from ray_jobs.train import main\nfrom ray import tune\n"),
        ("etva/data/x.py", "from .example import make_video_example\nimport importlib.util\n"),
    ],
)
def test_the_checker_allows_the_layering(rel, source):
    assert violations(source, rel) == []


def test_relative_imports_resolve_to_absolute_modules():
    assert imports_of("from . import a\nfrom ..model import b\n", "etva/data/x.py") == [
        (1, "etva.data"),
        (2, "etva.model"),
    ]
    assert imports_of("from .seam import f\n", "etva/cli/__init__.py") == [(1, "etva.cli.seam")]
