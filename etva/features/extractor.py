"""Offline feature extraction, the plain parts: decode a batch, encode it, write store shards.

Plain functions of numpy batches (no Ray), shared by the Ray Data job (``ray_jobs/extract.py``: the
same functions run in ``map_batches`` tasks and actors) and :func:`extract_local`, the single-process
loop it is benchmarked against. A batch is a dict of columns:

    video_id (B,) str, video_path (B,) str, start_s / end_s (B,) float (NaN = unset)
    -> decode: frames uint8 (B, T, S, S, 3), audio float32 (B, A), audio_len int64 (B,) (-1 = no audio),
       ok bool (B,), error str (B,)
    -> encode (one expert): feat/<e> float32 (B, N, D), ntok/<e> int64 (B,) (0 = no features)
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from etva.data.decode import DecodeError, decode_clip
from etva.data.feature_store import FeatureStoreWriter, register_store, store_dir
from etva.model.pretrained import encoder_dim, load_encoder, weight_hashes

if TYPE_CHECKING:
    import torch

# torch/transformers are imported where an encoder is loaded, so decode tasks start without them

__all__ = [
    "ExpertJob",
    "plan_experts",
    "decode_extract_batch",
    "BatchEncoder",
    "StoreSink",
    "decode_settings",
    "index_rows",
    "extract_local",
]

log = logging.getLogger(__name__)
# fault injection for tests (never set by users): after writing shard k the driver creates
# <dir>/shard-<k> and waits while that file exists, so a test can kill processes at a known point
PAUSE_DIR_ENV = "ETVA_EXTRACT_PAUSE_DIR"


@dataclass(frozen=True)
class ExpertJob:
    """One expert to extract: its encoder settings, identity (store key) and store folder."""

    name: str
    encoder: str
    path: str
    layer: int
    pooling: str
    dim: int
    identity: dict
    folder: str


def plan_experts(cfg) -> list[ExpertJob]:
    """The experts of ``cfg.extract.experts`` (default: every one with an ``encoder``), with identities.

    ``cfg`` is an :class:`etva.config.Config`. Raises ValueError naming the key when an expert is
    unknown, has no encoder, or no ``extract.output_dir`` is set.
    """
    ex = cfg.extract
    if not ex.output_dir:
        raise ValueError("extract.output_dir: a folder for the feature store is required")
    names = ex.experts or [n for n, e in cfg.model.experts.items() if e.encoder]
    if not names:
        raise ValueError("extract.experts: no expert to extract (set model.experts.<name>.encoder)")
    jobs = []
    for name in names:
        e = cfg.model.experts.get(name)
        if e is None:
            raise ValueError(
                f"extract.experts: unknown expert '{name}' (model.experts has {list(cfg.model.experts)})"
            )
        if not e.encoder:
            raise ValueError(f"model.experts.{name}.encoder: required for extraction (clip | videomae | ast)")
        where = f"model.experts.{name}"
        dim, pooling, model_type = encoder_dim(e.encoder, e.pretrained_path, e.pooling, where)
        if e.encoder == "ast":
            decode = {"audio_rate": ex.audio_rate, "max_audio_s": ex.max_audio_s}
        else:
            decode = {"num_frames": ex.num_frames, "frame_size": ex.frame_size}
        identity = {
            "encoder": e.encoder,
            "model_type": model_type,
            "weights": weight_hashes(e.pretrained_path),
            "layer": e.layer,
            "pooling": pooling,
            "dim": dim,
            "dtype": ex.dtype,
            "decode": decode,
        }
        folder = str(store_dir(ex.output_dir, name, identity))
        jobs.append(ExpertJob(name, e.encoder, e.pretrained_path, e.layer, pooling, dim, identity, folder))
    return jobs


def _time(v) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def decode_extract_batch(batch: dict, settings: Mapping) -> dict:
    """Decode a batch of clips for the encoders; a bad clip gets ``ok=False`` and its error, never raises.

    ``settings``: num_frames, frame_size, audio_rate, max_audio_s, frames (bool), audio (bool).
    """
    ids, paths = list(batch["video_id"]), list(batch["video_path"])
    n = len(ids)
    starts, ends = batch.get("start_s", [None] * n), batch.get("end_s", [None] * n)
    t, s = settings["num_frames"], settings["frame_size"]
    frames = np.zeros((n, t, s, s, 3), np.uint8)  # (B, T, S, S, 3)
    a_max = int(settings["audio_rate"] * settings["max_audio_s"]) if settings["audio"] else 0
    audio = np.zeros((n, a_max), np.float32)  # (B, A)
    audio_len = np.full(n, -1, np.int64)
    ok, errors = np.ones(n, bool), [""] * n
    for i, path in enumerate(paths):
        try:
            clip = decode_clip(
                str(path),
                t,
                s,
                start_s=_time(starts[i]),
                end_s=_time(ends[i]),
                audio_rate=settings["audio_rate"] if settings["audio"] else None,
                max_audio_s=settings["max_audio_s"],
            )
        except (DecodeError, OSError) as e:
            ok[i], errors[i] = False, f"{type(e).__name__}: {e}"
            continue
        frames[i] = clip.frames
        if clip.audio is not None and a_max:
            k = min(len(clip.audio), a_max)
            audio[i, :k], audio_len[i] = clip.audio[:k], k
    out = {"video_id": np.asarray(ids, dtype=object), "ok": ok, "error": np.asarray(errors, dtype=object)}
    if settings["frames"]:
        out["frames"] = frames
    if settings["audio"]:
        out.update(audio=audio, audio_len=audio_len)
    return out


_INPUTS = ("frames", "audio", "audio_len", "video_path", "start_s", "end_s")


class BatchEncoder:
    """One loaded frozen encoder; ``__call__(batch)`` adds ``feat/<e>`` and ``ntok/<e>`` columns
    (``drop_inputs``: and drops the decoded frames/audio, for the last encoder of a chain).

    Used as a Ray Data actor class (one encoder per actor) and directly by :func:`extract_local`.
    """

    def __init__(
        self,
        job: ExpertJob,
        num_frames: int,
        audio_rate: int,
        torch_threads: int = 1,
        device: str = "",
        drop_inputs: bool = False,
    ) -> None:
        if torch_threads > 0:
            torch.set_num_threads(torch_threads)
        self.job, self.audio_rate, self.drop_inputs = job, audio_rate, drop_inputs
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.encoder = load_encoder(job.encoder, job.path, job.layer, job.pooling).to(self.device)
        self.tokens = self.encoder.out_tokens(num_frames)

    def _inputs(self, batch: dict, rows: np.ndarray) -> torch.Tensor | None:
        if self.encoder.input == "frames":
            return torch.from_numpy(np.ascontiguousarray(batch["frames"][rows]))
        banks = [
            self.encoder.fbank(batch["audio"][i, : batch["audio_len"][i]], self.audio_rate) for i in rows
        ]
        return torch.from_numpy(np.stack(banks)) if banks else None

    def __call__(self, batch: dict) -> dict:
        n = len(batch["video_id"])
        usable = np.asarray(batch["ok"], bool).copy()
        if self.encoder.input == "audio":
            usable &= np.asarray(batch["audio_len"]) > 0  # no audio track: done, without features
        rows = np.flatnonzero(usable)
        feats, ntok = None, np.zeros(n, np.int64)
        x = self._inputs(batch, rows) if len(rows) else None
        if x is not None:
            y = self.encoder(x.to(self.device)).float().cpu().numpy()  # (b, N, D)
            feats = np.zeros((n, *y.shape[1:]), np.float32)
            feats[rows], ntok[rows] = y, y.shape[1]
        if feats is None:  # nothing usable in this batch: zeros of the usual shape
            feats = np.zeros((n, self.tokens, self.job.dim), np.float32)
        out = {k: v for k, v in batch.items() if not (self.drop_inputs and k in _INPUTS)}
        return {**out, f"feat/{self.job.name}": feats, f"ntok/{self.job.name}": ntok}


def _pause(gate: Path) -> None:
    """Create ``gate`` and wait while it exists (see ``PAUSE_DIR_ENV``)."""
    gate.write_text(str(os.getpid()))
    while gate.exists():
        time.sleep(0.05)


class StoreSink:
    """Writes encoded batches to each expert's store (one shard per batch per expert)."""

    def __init__(self, jobs: list[ExpertJob], dtype: str, root: str) -> None:
        self.jobs, self.root = jobs, root
        self.writers = {j.name: FeatureStoreWriter(j.folder, j.identity, j.dim, dtype, j.name) for j in jobs}
        self.shards = self.written = self.failed = 0
        self.pause_dir = os.environ.get(PAUSE_DIR_ENV, "")
        self.marks: list[tuple[float, int]] = []  # (time, clips) per shard written, for throughput

    def first_shard_s(self, t0: float) -> float | None:
        """Seconds from ``t0`` (a ``perf_counter`` time) to the first shard written (start-up latency)."""
        return round(self.marks[0][0] - t0, 3) if self.marks else None

    def todo(self, ids: Iterable[str]) -> list[str]:
        """The ids some expert still lacks."""
        return [i for i in ids if any(i not in w.done for w in self.writers.values())]

    def write(self, batch: dict) -> None:
        ids = [str(v) for v in batch["video_id"]]
        ok = np.asarray(batch["ok"], bool)
        fails = {ids[i]: str(batch["error"][i]) for i in np.flatnonzero(~ok)}
        good = np.flatnonzero(ok)
        for name, w in self.writers.items():
            feats, ntok = batch[f"feat/{name}"], batch[f"ntok/{name}"]
            before = len(w.done)
            w.write_shard([ids[i] for i in good], [feats[i, : ntok[i]] for i in good])
            w.record_failures(fails)
            self.written += len(w.done) - before
        self.failed += len(fails)
        self.shards += 1
        self.marks.append((time.perf_counter(), len(ids)))
        if self.pause_dir:
            _pause(Path(self.pause_dir) / f"shard-{self.shards}")

    def finish(self) -> dict:
        for j in self.jobs:
            register_store(self.root, j.name, j.folder)
        return {j.name: {"store": j.folder, "done": len(self.writers[j.name].done)} for j in self.jobs}


def decode_settings(cfg, jobs: list[ExpertJob]) -> dict:
    ex = cfg.extract
    return {
        "num_frames": ex.num_frames,
        "frame_size": ex.frame_size,
        "audio_rate": ex.audio_rate,
        "max_audio_s": ex.max_audio_s,
        "frames": any(j.encoder != "ast" for j in jobs),
        "audio": any(j.encoder == "ast" for j in jobs),
    }


def extract_local(cfg, rows: list[dict]) -> dict:
    """The plain single-process loop: decode -> every encoder -> shards, batch by batch.

    ``rows``: index rows (video_id, video_path, start_s, end_s). Returns a summary with clips/s.
    """
    jobs = plan_experts(cfg)
    sink = StoreSink(jobs, cfg.extract.dtype, cfg.extract.output_dir)
    todo = set(sink.todo(r["video_id"] for r in rows))
    rows = [r for r in rows if r["video_id"] in todo]
    settings = decode_settings(cfg, jobs)
    ex = cfg.extract
    encoders = [
        BatchEncoder(j, ex.num_frames, ex.audio_rate, ex.torch_threads, drop_inputs=j is jobs[-1])
        for j in jobs
    ]
    t0 = time.perf_counter()
    bs, shard = cfg.extract.batch_size, cfg.extract.shard_size
    pending: list[dict] = []
    for s in range(0, len(rows), bs):
        chunk = rows[s : s + bs]
        batch = decode_extract_batch({k: [r[k] for r in chunk] for k in chunk[0]}, settings)
        for enc in encoders:
            batch = enc(batch)
        pending.append(batch)
        if sum(len(b["video_id"]) for b in pending) >= shard or s + bs >= len(rows):
            sink.write(_concat(pending))
            pending = []
    seconds = time.perf_counter() - t0
    return {
        "clips": len(rows),
        "seconds": seconds,
        "first_shard_s": sink.first_shard_s(t0),
        "stores": sink.finish(),
        "failed": sink.failed,
    }


def _concat(batches: list[dict]) -> dict:
    keys = [k for k in batches[0] if k not in ("frames", "audio")]
    return {k: np.concatenate([np.asarray(b[k]) for b in batches]) for k in keys}


def index_rows(records) -> list[dict]:
    """Extraction rows from records, one per distinct video_id (first wins)."""
    seen, rows = set(), []
    for r in records:
        if r.video_id in seen:
            continue
        seen.add(r.video_id)
        rows.append(
            {
                "video_id": r.video_id,
                "video_path": str(Path(r.video_path)),
                "start_s": float("nan") if r.start_s is None else float(r.start_s),
                "end_s": float("nan") if r.end_s is None else float(r.end_s),
            }
        )
    return rows
