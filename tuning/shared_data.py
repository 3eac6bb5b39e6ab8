"""Data a sweep prepares once for all its trials.

Before the first trial, the sweep driver prepares the base config's data: the records (unusable files
dropped), the tokenizer, the tokenized captions and, with ``data.cache=memory|disk``, the decoded clips.
Every trial whose data settings equal the base's (same :func:`data_key`) trains on exactly these: it
loads no annotation file, trains no tokenizer and decodes no clip. A trial that sweeps a data setting
(``data.num_frames``, ...) prepares its own, as a training run does.

What lasts beyond the sweep driver:

- the tokenizer is kept under ``<ray.storage_path>/tokenizer-cache/<key>/`` (keyed by the vocabulary
  size and the training captions): a resumed sweep, a later sweep and a training run on the same
  captions load it instead of training it again;
- ``data.cache=disk`` keeps the decoded clips under ``<ray.storage_path>/decoded-cache/<key>/``: a resumed
  sweep and a later sweep on the same data read them; ``data.cache=memory`` keeps them in the sweep
  driver's object store, so a resumed sweep (a new driver) decodes them once again.

What each preparation did is counted (:class:`SharedData` ``outcome``): the sweep's MLflow parent run and
every trial's child run record it (``prep/clips_decoded``, ``prep/tokenizer_trained`` and the tag
``etva.data.prepared_by``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from etva.config import Config
from ray_jobs.prepare import build_datasets
from ray_jobs.train import prepare_data
from tuning.mlflow_sweep import child_runs

__all__ = ["SharedData", "data_key", "prepare_shared", "trial_data", "PREPARED_BY_TAG"]

logger = logging.getLogger("etva.sweep")
PREPARED_BY_TAG = "etva.data.prepared_by"  # "sweep" (shared) or "trial" (its own) on a child run
OUTCOME_TAG = "etva.sweep.prepared"  # the parent run: what the driver prepared, as JSON


def data_key(cfg: Config) -> str:
    """A digest of every setting the prepared data depends on: the data section, the number of Train
    workers (one evaluation shard per rank) and the decode parallelism (blocks). Not ``train.seed``:
    a seed sweep (or a study's seeds) shares one decoded set; each trial's order still follows its own
    seed (the worker's local shuffle and caption sampling, ``ray_jobs.batches``)."""
    settings = {
        "data": asdict(cfg.data),
        "num_workers": cfg.ray.num_workers,
        "decode_concurrency": cfg.ray.decode_concurrency,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SharedData:
    """Prepared data (``ray_jobs.train.PreparedData``), its Ray Datasets and what preparing them did."""

    key: str
    data: object  # ray_jobs.train.PreparedData
    datasets: dict
    outcome: dict = field(default_factory=dict)


def _complete_caches(root: Path) -> dict[str, int]:
    """{folder name: rows} of the complete decoded caches under ``root`` (``ray_jobs.cache``)."""
    if not root.is_dir():
        return {}
    out = {}
    for marker in root.glob("*/_COMPLETE"):
        out[marker.parent.name] = int(json.loads(marker.read_text()).get("rows", 0))
    return out


def prepare_shared(cfg: Config, run_name: str, cache_root: str) -> SharedData:
    """Prepare ``cfg``'s training data and build its Ray Datasets (decoding the clips now when
    ``data.cache`` is memory or disk), with the tokenizer and the disk cache under ``cache_root``."""
    with tempfile.TemporaryDirectory() as tmp:  # the tokenizer's files travel in PreparedData
        data = prepare_data(cfg, run_name, cache_root, tokenizer_dir=Path(tmp) / "tokenizer")
    at = copy.deepcopy(cfg)
    at.ray.storage_path = cache_root or cfg.ray.storage_path  # where data.cache=disk keeps the clips
    disk = Path(at.ray.storage_path) / "decoded-cache"
    before = _complete_caches(disk) if cfg.data.cache == "disk" else {}
    datasets = build_datasets(at, data.splits)
    clips = sum(len(s.records) for s in data.splits.values())
    if cfg.data.cache == "memory":
        decoded = clips
    elif cfg.data.cache == "disk":
        decoded = sum(n for name, n in _complete_caches(disk).items() if name not in before)
    else:
        decoded = 0  # data.cache=none: the trial's pipeline decodes every epoch
    outcome = {
        "tokenizer": data.tokenizer_origin,
        "tokenizer_trained": int(data.tokenizer_origin == "trained"),
        "clips": clips,
        "clips_decoded": decoded,
        "cache": cfg.data.cache,
    }
    return SharedData(data_key(cfg), data, datasets, outcome)


def trial_data(shared: SharedData | None, cfg: Config, run_name: str, cache_root: str) -> SharedData:
    """The sweep's shared data when ``cfg`` has the same data settings, else the trial's own."""
    if shared is not None and shared.key == data_key(cfg):
        outcome = {"prepared_by": "sweep", "tokenizer_trained": 0, "clips_decoded": 0}
        return SharedData(shared.key, shared.data, shared.datasets, outcome)
    logger.info("%s: data settings differ from the sweep's: preparing its own data", run_name)
    own = prepare_shared(cfg, run_name, cache_root)
    return SharedData(own.key, own.data, own.datasets, {**own.outcome, "prepared_by": "trial"})


def describe(outcome: dict) -> str:
    """One line for the sweep's parent run and log: what the driver prepared or reused."""
    cache = outcome["cache"]
    where = {
        "memory": "into the sweep driver's object store",
        "disk": "into the disk cache (ray.storage_path/decoded-cache)",
    }.get(cache, "")
    if cache == "none":
        clips = "clips decoded by each trial every epoch (data.cache=none)"
    elif outcome["clips_decoded"]:
        clips = f"{outcome['clips_decoded']} of {outcome['clips']} clips decoded once {where}"
    else:
        clips = f"all {outcome['clips']} clips reused from the disk cache"
    tokenizer = {
        "trained": "tokenizer trained once",
        "shared": "tokenizer reused (trained earlier on the same captions)",
        "pretrained": "pretrained tokenizer (data.tokenizer_path)",
    }.get(outcome["tokenizer"], outcome["tokenizer"])
    return f"data prepared once for the trials: {tokenizer}; {clips}"


def log_preparation(client, run_id: str, outcome: dict, marks: dict[str, float]) -> None:
    """A trial's child run: who prepared its data, what it decoded and trained itself, and its start-up
    marks (``timing/<mark>``, unix times; the Train worker adds its own with its first epoch)."""
    # lazy: mlflow takes 2.5 s CPU to import; a process without a tracking server never pays it
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    metrics = {f"prep/{key}": float(outcome[key]) for key in ("clips_decoded", "tokenizer_trained")}
    metrics.update({f"timing/{k}": float(v) for k, v in marks.items()})
    client.log_batch(
        run_id,
        metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
        tags=[RunTag(PREPARED_BY_TAG, outcome["prepared_by"])],
    )  # one request


def reuse_note(client, exp_id: str, parent_id: str, prepared: str) -> str:
    """The parent run's account of reuse: what the driver prepared and how many trials used it."""
    children = child_runs(client, exp_id, parent_id)
    own = [r.info.run_name for r in children if r.data.tags.get(PREPARED_BY_TAG) == "trial"]
    used = sum(r.data.tags.get(PREPARED_BY_TAG) == "sweep" for r in children)
    line = f"{prepared or 'data not prepared by the sweep driver'}; {used} of {len(children)} trials used it"
    if own:
        line += f"; {len(own)} prepared their own (other data settings): {', '.join(sorted(own))}"
    return line
