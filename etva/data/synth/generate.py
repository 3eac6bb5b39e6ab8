"""The synthetic "shapes" text-video benchmark generator.

``generate_dataset(out_dir, num_videos, seed)`` writes real H.264/AAC ``.mp4`` clips and the
annotation files of MSRVTT (default), ActivityNet Captions or LSMDC, plus ``shapes_manifest.json``
(the ground-truth attributes and hard negatives of every clip), so the data goes through the same
loaders as the real datasets. The same arguments give identical files.

Output directory rule: a new or empty directory is filled; a directory holding a finished or
interrupted generation with the *same* parameters is completed (existing clips are kept, so a
re-run is a cheap no-op); anything else (a file, a non-empty foreign directory, a generation with
other parameters, an unwritable path) is refused with a :class:`SynthError`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

from etva.config import SynthConfig
from etva.data.synth.compositional import GROUP_SIZE
from etva.data.synth.content import vocabulary
from etva.data.synth.layouts import LAYOUTS, Plan
from etva.data.synth.render import (
    AUDIO_RATE,
    SHORTEST_ALIGNED_SEGMENT_S,
    SOUND_GRID,
    SOUND_MARGIN_S,
    ClipJob,
    write_clips,
)

__all__ = ["SynthError", "FORMATS", "MANIFEST_NAME", "generate_dataset"]

log = logging.getLogger(__name__)

FORMATS = tuple(LAYOUTS)
MANIFEST_NAME = "shapes_manifest.json"  # written last: marks a finished generation
PARTIAL_NAME = ".shapes_partial.json"  # marks a generation in progress (holds its parameters)
GENERATOR_VERSION = 1


class SynthError(ValueError):
    """A bad argument or output path; ``hint`` says what to do instead."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


def _check_args(num_videos: int, seed: int, fmt: str, cfg: SynthConfig, workers: int | None) -> None:
    def need(ok: bool, what: str, hint: str = "") -> None:
        if not ok:
            raise SynthError(what, hint)

    need(
        isinstance(num_videos, int) and num_videos >= 1,
        f"num_videos must be an integer >= 1, got {num_videos!r}",
    )
    need(isinstance(seed, int) and seed >= 0, f"seed must be an integer >= 0, got {seed!r}")
    need(fmt in LAYOUTS, f"unknown format {fmt!r}", f"choose one of: {', '.join(FORMATS)}")
    need(
        workers is None or (isinstance(workers, int) and workers >= 1),
        f"workers must be >= 1, got {workers!r}",
    )
    for name in ("width", "height"):
        v = getattr(cfg, name)
        need(v >= 16 and v % 2 == 0, f"synth.{name} must be an even number >= 16 (H.264 yuv420p), got {v}")
    need(cfg.fps >= 1, f"synth.fps must be >= 1, got {cfg.fps}")
    need(cfg.duration_s > 0, f"synth.duration_s must be > 0, got {cfg.duration_s}")
    need(cfg.captions_per_video >= 1, f"synth.captions_per_video must be >= 1, got {cfg.captions_per_video}")
    need(
        cfg.mode == "shapes" or fmt == "msrvtt",
        f"synth.mode={cfg.mode!r} is built for the msrvtt layout only, got format {fmt!r}",
        "use --format msrvtt (or synth.mode=shapes)",
    )
    need(
        cfg.mode != "compositional" or num_videos > 2 * GROUP_SIZE,
        f"synth.mode=compositional needs at least {2 * GROUP_SIZE + 1} videos (three groups of a target and "
        f"its distractors: train, validate and test each hold whole groups), got {num_videos}",
    )
    need(
        cfg.object_words == "phrase" or cfg.mode == "compositional",
        f"synth.object_words={cfg.object_words!r} names the objects of compositional captions only, "
        f"got synth.mode={cfg.mode!r}",
        "use synth.mode=compositional (or synth.object_words=phrase)",
    )
    frames = cfg.fps * cfg.duration_s
    need(
        cfg.mode != "compositional" or abs(frames - round(frames)) < 1e-9,
        f"synth.mode=compositional needs a whole number of frames (fps x duration_s), so both events last "
        f"as long; got {cfg.fps} x {cfg.duration_s} = {frames:g}",
    )
    shortest = 2 * SHORTEST_ALIGNED_SEGMENT_S  # two events
    need(
        cfg.mode != "compositional" or cfg.duration_s >= shortest,
        f"synth.mode=compositional needs synth.duration_s >= {shortest:g}, so that each event's sound lasts "
        f"one {SOUND_GRID / AUDIO_RATE:g} s step of its grid inside {SOUND_MARGIN_S:g} s of silence at both "
        f"ends; got {cfg.duration_s}",
    )


def _params(num_videos: int, seed: int, fmt: str, cfg: SynthConfig) -> dict:
    return {
        "generator_version": GENERATOR_VERSION,
        "format": fmt,
        "num_videos": num_videos,
        "seed": seed,
        "width": cfg.width,
        "height": cfg.height,
        "fps": cfg.fps,
        "duration_s": float(cfg.duration_s),
        "captions_per_video": cfg.captions_per_video,
        "audio_rate": AUDIO_RATE,
        **({"mode": cfg.mode} if cfg.mode != "shapes" else {}),  # shapes datasets keep their old params
        # compositional groups never straddle a split (a dataset made before that is refused: regenerate)
        **({"groups_within_splits": True} if cfg.mode == "compositional" else {}),
        # and their sounds sit on a grid inside silent margins (one made before that leaks the sound's moment)
        **({"aligned_sound": [SOUND_GRID, SOUND_MARGIN_S]} if cfg.mode == "compositional" else {}),
        **({"object_words": cfg.object_words} if cfg.object_words != "phrase" else {}),  # older keep theirs
    }


def _read_params(root: Path) -> dict | None:
    for name in (MANIFEST_NAME, PARTIAL_NAME):
        if (root / name).is_file():
            try:
                return json.loads((root / name).read_text())["params"]
            except (OSError, ValueError, KeyError) as e:
                raise SynthError(
                    f"{root / name}: unreadable synthetic dataset marker ({e})",
                    f"delete {root} (or use another --out) to regenerate",
                ) from e
    return None


def _prepare_out_dir(root: Path, params: dict) -> None:
    """Create ``root`` or check that it may be (re)filled with a generation of ``params``."""
    if root.exists() and not root.is_dir():
        raise SynthError(
            f"output path {root} is a file, expected a directory", "pass a directory path to --out"
        )
    if root.is_dir() and any(root.iterdir()):
        old = _read_params(root)
        if old is None:
            raise SynthError(
                f"output directory {root} is not empty and holds no synthetic dataset (no {MANIFEST_NAME})",
                "choose a new or empty --out directory",
            )
        keys = list(params) + [k for k in old if k not in params]  # a key of either side may differ
        diff = {k: (old.get(k), params.get(k)) for k in keys if old.get(k) != params.get(k)}
        if diff:
            have = ", ".join(f"{k}={a!r}" for k, (a, _) in diff.items())
            want = ", ".join(f"{k}={b!r}" for k, (_, b) in diff.items())
            raise SynthError(
                f"output directory {root} holds a synthetic dataset made with {have} (asked: {want})",
                f"use another --out directory, or delete {root} to regenerate",
            )
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SynthError(
            f"cannot create output directory {root}: {e.strerror or e}", "check the path and its permissions"
        ) from e
    if not os.access(root, os.W_OK | os.X_OK):
        raise SynthError(f"output directory {root} is not writable", "choose a directory you can write to")


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text)
    os.replace(tmp, path)


def _render_all(root: Path, jobs: list[ClipJob], workers: int, progress: bool) -> None:
    """Write the clips, in a process pool when ``workers > 1``, with a tqdm bar on stderr."""
    with tqdm(total=len(jobs), file=sys.stderr, disable=not progress, unit="clip", desc="synth") as bar:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                write_clips(str(root), [job])
                bar.update(1)
            return
        size = max(1, min(8, len(jobs) // (4 * workers)))
        batches = [jobs[i : i + size] for i in range(0, len(jobs), size)]
        method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(workers, mp_context=mp.get_context(method)) as pool:
            futures = {pool.submit(write_clips, str(root), b): b for b in batches}
            for fut in as_completed(futures):
                try:
                    bar.update(len(fut.result()))
                except OSError as e:
                    for f in futures:
                        f.cancel()
                    names = ", ".join(j.path for j in futures[fut])
                    raise SynthError(f"cannot write clip(s) {names} under {root}: {e}") from e


def _cpu_count() -> int:
    """Cores this process may run on (the default number of workers)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _missing(root: Path, plan: Plan) -> tuple[list[ClipJob], list[str]]:
    jobs = [j for j in plan.jobs if not (root / j.path).is_file()]
    files = [f for f in plan.files if not (root / f).is_file()]
    return jobs, files


def _write_all(
    root: Path, params: dict, plan: Plan, jobs: list[ClipJob], workers: int, progress: bool
) -> None:
    """Render the missing clips, write the annotation files, then the manifest (last: marks it finished)."""
    _write_text(root / PARTIAL_NAME, json.dumps({"params": params}))
    for stale in root.rglob("*.partial"):  # left by an interrupted run
        stale.unlink()
    _render_all(root, jobs, workers, progress)
    for name, text in plan.files.items():
        _write_text(root / name, text)
    manifest = {
        "params": params,
        "vocabulary": vocabulary(),
        "splits": plan.splits,
        "videos": plan.videos,
    }
    _write_text(root / MANIFEST_NAME, json.dumps(manifest, indent=1))
    (root / PARTIAL_NAME).unlink()


def generate_dataset(
    out_dir: str | Path,
    num_videos: int,
    seed: int,
    fmt: str = "msrvtt",
    cfg: SynthConfig | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Generate (or complete) the synthetic dataset under ``out_dir``.

    Args:
        out_dir: dataset root; see the module docstring for which directories are accepted.
        num_videos, seed: size and seed (they override ``cfg.num_videos``/``cfg.seed``).
        fmt: ``msrvtt`` | ``activitynet`` | ``lsmdc``.
        cfg: clip size, fps, duration and captions per video (defaults: ``SynthConfig()``).
        workers: processes rendering clips (default: the cores this process may use).
        progress: show a progress bar on stderr.

    Returns:
        summary dict: format, out_dir, num_videos, splits (videos per split), num_captions,
        clips_written, files_written, reused (nothing had to be written), seconds, clips_per_s.
    """
    cfg = dataclasses.replace(cfg or SynthConfig(), num_videos=num_videos, seed=seed)
    _check_args(num_videos, seed, fmt, cfg, workers)
    t0 = time.perf_counter()
    root = Path(out_dir).expanduser().resolve()
    params = _params(num_videos, seed, fmt, cfg)
    _prepare_out_dir(root, params)
    plan = LAYOUTS[fmt](num_videos, seed, cfg)
    jobs, files = _missing(root, plan)
    finished = (root / MANIFEST_NAME).is_file()
    if jobs or files or not finished:
        _write_all(root, params, plan, jobs, min(workers or _cpu_count(), max(1, len(jobs))), progress)
    seconds = time.perf_counter() - t0
    written = bool(jobs or files or not finished)
    summary = {
        "format": fmt,
        "out_dir": str(root),
        "num_videos": num_videos,
        "splits": plan.splits,
        "num_captions": plan.num_captions,
        "clips_written": len(jobs),
        "files_written": len(jobs) + (len(plan.files) + 1 if written else 0),
        "reused": not written,
        "seconds": round(seconds, 3),
        "clips_per_s": round(len(jobs) / seconds, 2) if jobs else 0.0,
    }
    log.info("synthetic %s dataset in %s: %s", fmt, root, summary)
    return summary
