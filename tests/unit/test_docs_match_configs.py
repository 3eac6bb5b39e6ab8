"""README = docs = configs: every weight folder a shipped config reads is downloaded by the README and
by docs/, with one model name per folder everywhere, and no document downloads into a folder no config
reads (a user who follows the README must never get "folder missing")."""

from __future__ import annotations

import re
from pathlib import Path

from etva.config import load_config

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
DOWNLOAD = re.compile(r"^\s*hf download (\S+) --local-dir (\S+)", re.M)


def _downloads() -> dict[Path, dict[str, str]]:
    """``{document: {folder: model name}}`` of every ``hf download <name> --local-dir <folder>`` line."""
    return {doc: {folder: name for name, folder in DOWNLOAD.findall(doc.read_text())} for doc in DOCS}


def _config_folders() -> dict[str, str]:
    """``{weight folder: "<config>: <key>"}`` of every pretrained path in a shipped config."""
    out = {}
    for path in sorted((REPO / "ray_jobs/configs").glob("*.yaml")):
        cfg = load_config(path)
        places = {"data.tokenizer_path": cfg.data.tokenizer_path, "model.text.pretrained_path":
                  cfg.model.text.pretrained_path}  # fmt: skip
        places |= {f"model.experts.{n}.pretrained_path": e.pretrained_path for n, e in cfg.model.experts.items()}
        out |= {folder: f"{path.name}: {key}" for key, folder in places.items() if folder}
    return out


def test_every_config_weight_folder_is_downloaded_by_the_readme_and_docs():
    downloads, folders = _downloads(), _config_folders()
    assert folders, "no shipped config reads pretrained weights: this test checks nothing"
    readme, docs = downloads[REPO / "README.md"], {f for d, m in downloads.items() if d.parent.name == "docs" for f in m}
    for folder, where in folders.items():
        assert folder in readme, f"README.md: no `hf download ... --local-dir {folder}` ({where})"
        assert folder in docs, f"docs/: no `hf download ... --local-dir {folder}` ({where})"


def test_one_model_per_folder_and_no_unused_folder():
    folders = _config_folders()
    seen: dict[str, tuple[str, Path]] = {}
    for doc, lines in _downloads().items():
        for folder, name in lines.items():
            assert folder in folders, f"{doc.name}: downloads into {folder}, which no shipped config reads"
            first = seen.setdefault(folder, (name, doc))
            assert first[0] == name, f"{folder}: {first[1].name} downloads {first[0]}, {doc.name} {name}"
