"""What makes an MLflow run readable on its own: source tags, the dataset input, the note, the job's log.

- :func:`source_tags`: MLflow's standard ``mlflow.source.*`` tags (the run page's *Source* and commit).
- :func:`log_dataset_inputs`: each prepared split as an MLflow dataset input (name, digest of its
  content, profile), so the run page's *Datasets* lists them and runs on the same data share a digest.
- :func:`note`: the run's description (``mlflow.note.content``): the result table and the data summary.
- :func:`captured_log`: a copy of the job's output (log records, prints, workers' lines forwarded by
  Ray) in a file, uploaded to the run as ``logs/<name>`` when the job ends, failed or not.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import logging
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

from etva.config import Config

logger = logging.getLogger(__name__)

GIT_COMMIT, SOURCE_NAME, SOURCE_TYPE = "mlflow.source.git.commit", "mlflow.source.name", "mlflow.source.type"
NOTE, USER = "mlflow.note.content", "mlflow.user"
DATA_CONTEXT = "mlflow.data.context"
LOG_DIR = "logs"


def source_tags(entry: str, commit: str) -> dict[str, str]:
    """The standard source tags: ``entry`` (e.g. ``ray_jobs.train``), the repository's commit, the user
    the job runs as (the run page's *Created by*)."""
    tags = {SOURCE_NAME: entry, SOURCE_TYPE: "JOB", USER: _user()}
    if commit and commit != "unknown":
        tags[GIT_COMMIT] = commit
    return tags


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def split_digest(split: Any) -> str:
    """sha256 (first 16 hex digits) of a prepared split's content: video ids, files, captions in order."""
    h = hashlib.sha256()
    for r in split.records:
        h.update(json.dumps([r.video_id, Path(r.video_path).name, r.captions, r.start_s, r.end_s]).encode())
    return h.hexdigest()[:16]


def _profile(summary: Mapping[str, Any]) -> dict[str, Any]:
    """A split's summary with the dropped ids replaced by their count."""
    out = {k: v for k, v in summary.items() if k != "dropped_video_ids"}
    out["dropped"] = len(summary.get("dropped_video_ids", []))
    return out


def log_dataset_inputs(client, run_id: str, cfg: Config, prepared: Mapping[str, Any]) -> None:
    """Log every prepared split (``{role: PreparedSplit}``) as an MLflow dataset input of the run."""
    # lazy: mlflow takes 2.5 s CPU to import; a process without a tracking server never pays it
    from mlflow.entities import Dataset, DatasetInput, InputTag

    inputs = []
    for role, split in prepared.items():
        profile = _profile(split.summary_dict())
        name = f"{cfg.data.dataset}-{cfg.data.subset}-{role}"  # role: train / val (carved or a split)
        ds = Dataset(
            name=name,
            digest=split_digest(split),
            source_type="local",
            source=json.dumps({"uri": str(cfg.data.root)}),
            profile=json.dumps(profile, default=str),
        )
        inputs.append(DatasetInput(ds, tags=[InputTag(DATA_CONTEXT, role)]))
    if inputs:
        client.log_inputs(run_id, datasets=inputs)


NOTE_DATA_KEYS = ("split", "videos", "captions", "dropped", "missing_video_files")


def note(title: str, table: str, selection: str, data_summary: Mapping[str, Any]) -> str:
    """The run description (markdown): the result table, how it was selected, what data it saw (one
    row per split; the full summary is the artifact ``data_summary.json``)."""
    rows = ["| data | " + " | ".join(NOTE_DATA_KEYS) + " |", "|---" * (len(NOTE_DATA_KEYS) + 1) + "|"]
    for role, s in data_summary.items():
        p = _profile(s)
        rows.append(f"| {role} | " + " | ".join(str(p.get(k, "-")) for k in NOTE_DATA_KEYS) + " |")
    root = next((s.get("root") for s in data_summary.values() if s.get("root")), "")
    data = "\n".join(rows) + (f"\n\nroot: `{root}`" if root else "")
    return f"### {title}\n\n{selection}\n\n```\n{table}\n```\n\n{data}\n"


class _Tee:
    """A text stream that writes to ``stream`` and to ``copy``."""

    def __init__(self, stream: TextIO, copy: TextIO) -> None:
        self._stream, self._copy = stream, copy

    def write(self, s: str) -> int:
        self._copy.write(s)
        return self._stream.write(s)

    def flush(self) -> None:
        self._copy.flush()
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding, ...
        return getattr(self._stream, name)


@contextlib.contextmanager
def captured_log(path: str | Path) -> Iterator[Path]:
    """Copy log records, stdout and stderr of this process (and what Ray forwards from workers) to
    ``path`` while inside; the streams are restored afterwards."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", buffering=1) as f:
        handler = logging.StreamHandler(f)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        old = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(old[0], f), _Tee(old[1], f)
        try:
            yield path
        finally:
            sys.stdout, sys.stderr = old
            root.removeHandler(handler)


def upload_log(client, run_id: str, path: str | Path) -> None:
    """Upload the captured log as ``logs/<name>`` (never raises: the job's own outcome matters more)."""
    if client is None or not run_id or not Path(path).is_file():
        return
    try:
        client.log_artifact(run_id, str(path), artifact_path=LOG_DIR)
    except Exception as e:  # the server may be the reason the job failed
        logger.warning("could not upload the job log %s to MLflow: %s", path, e)
