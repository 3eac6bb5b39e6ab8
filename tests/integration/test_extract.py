"""ray_jobs.extract on the shapes benchmark through a real local Ray cluster: three tiny random encoders
(CLIP vision, VideoMAE, AST) saved with save_pretrained; run twice (the second reuses everything); an
encoder actor and then the driver SIGKILLed mid-run, then resumed (nothing lost or duplicated); a changed
decode setting makes a new store; the jobs' dataset builder reads the store with no video."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from etva.config import load_config
from etva.data.feature_store import FeatureStore, open_stores
from etva.data.synth import generate_dataset
from etva.features.extractor import PAUSE_DIR_ENV, extract_local
from ray_jobs.extract import extraction_rows, main, run_extract
from tests.integration.tiny_encoders import encoder_overrides, save_tiny_encoders

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration
N = 16


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_encoders):
    root = tmp_path_factory.mktemp("shapes")
    cfg = load_config(REPO / "ray_jobs/configs/tiny.yaml", [f"data.root={root}"])
    generate_dataset(root, N, 0, cfg=cfg.data.synth, workers=2, progress=False)
    broken = sorted((root / "videos/all").glob("*.mp4"))[0]
    broken.write_bytes(b"")  # must be listed as failed, never crash the job
    return root, save_tiny_encoders(tmp_path_factory.mktemp("models")), broken.stem


def _overrides(root, models, out, *extra) -> list[str]:
    return [
        f"data.root={root}",
        *encoder_overrides(models),
        f"extract.output_dir={out}",
        "extract.num_frames=4",
        "extract.frame_size=32",
        "extract.max_audio_s=1.0",
        "extract.batch_size=2",
        "extract.shard_size=4",
        "extract.decode_cpus=0.5",
        "extract.cpus_per_actor=0.5",
        *extra,
    ]


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _clip(store: FeatureStore, vid: str, max_tokens: int = 64) -> np.ndarray:
    """The (T, D) features of one clip through the store's reader (T <= max_tokens: not sampled)."""
    feat, mask = store.read_tokens([vid], max_tokens)
    return feat[0][mask[0]]


def _ids_in_shards(store: FeatureStore) -> list[str]:
    return [
        i for f in store.shard_files() for i in pq.read_table(f, columns=["video_id"])["video_id"].to_pylist()
    ]


def test_extract_twice_and_matches_plain_loop(setup, ray_local, tmp_path):
    root, models, broken = setup
    cfg = load_config(REPO / "ray_jobs/configs/tiny.yaml", _overrides(root, models, tmp_path / "store"))
    first = run_extract(cfg)
    assert first["processed"] == N and first["failed"] == 1
    stores = open_stores(tmp_path / "store")
    assert sorted(stores) == ["appearance", "audio", "motion"]
    ids = {r["video_id"] for r in extraction_rows(cfg)} - {broken}
    for name, store in stores.items():
        assert store.ids() == ids, name
        man = store.manifest
        assert list(man["failed"]) == [broken] and "DecodeError" in man["failed"][broken]
        assert man["identity"]["weights"] and man["num_done"] == N - 1
    assert _clip(stores["appearance"], sorted(ids)[0]).shape == (4, 12)  # one CLIP embedding per frame
    assert _clip(stores["motion"], sorted(ids)[0]).shape == (2, 16)  # 4 frames / tubelet 2
    shards = {n: s.shard_files() for n, s in stores.items()}

    second = run_extract(cfg)  # everything reused: only the failed clip is tried again
    assert second["skipped_done"] == N - 1 and second["processed"] == 1 and second["failed"] == 1
    assert {n: s.shard_files() for n, s in open_stores(tmp_path / "store").items()} == shards

    # the plain single-process loop writes the same features
    cfg2 = load_config(REPO / "ray_jobs/configs/tiny.yaml", _overrides(root, models, tmp_path / "plain"))
    extract_local(cfg2, extraction_rows(cfg2))
    plain = open_stores(tmp_path / "plain")
    for name in stores:
        for vid in ids:
            np.testing.assert_allclose(
                _clip(plain[name], vid), _clip(stores[name], vid), rtol=1e-4, atol=1e-5
            )


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    """Wait until ``path`` exists (the driver paused there); fail at once if the driver died."""
    while not path.exists():
        assert proc.poll() is None, f"the extraction driver exited early (rc={proc.returncode})"
        time.sleep(0.05)


def _encoder_pids() -> list[int]:
    """Process ids of the live Ray Data actors (the encoder actor pools) of the cluster."""
    import ray

    return [a["Pid"] for a in ray.state.actors().values()
            if a["State"] == "ALIVE" and "MapWorker" in a["ActorClassName"] and a["Pid"]]  # fmt: skip


def test_sigkilled_encoder_then_driver_then_resumed(setup, ray_local, tmp_path):
    """A real kill: the driver (`python -m ray_jobs.extract`, its own process on this cluster) pauses
    after each shard; after shard 1 an encoder actor is SIGKILLed and the job goes on (Ray restarts the
    actor); after shard 2 the driver itself is SIGKILLed. The rerun finishes: nothing lost, nothing twice."""
    root, models, broken = setup
    out, gates = tmp_path / "store", tmp_path / "gates"
    gates.mkdir()
    address = ray_local.get_runtime_context().gcs_address
    argv = [sys.executable, "-m", "ray_jobs.extract", "--config", str(REPO / "ray_jobs/configs/tiny.yaml"),
            *_overrides(root, models, out), f"ray.address={address}"]  # fmt: skip
    env = {**os.environ, PAUSE_DIR_ENV: str(gates), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(gates / "shard-1", proc)
        victims = _encoder_pids()
        assert victims, "no encoder actor found to kill"
        os.kill(victims[0], signal.SIGKILL)
        (gates / "shard-1").unlink()  # go on without that actor
        _wait_for(gates / "shard-2", proc)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=600) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    partial = {name: set(_ids_in_shards(s)) for name, s in _stores_by_folder(out).items()}
    assert all(0 < len(ids) < N - 1 for ids in partial.values()), partial
    cfg = load_config(REPO / "ray_jobs/configs/tiny.yaml", _overrides(root, models, out))
    summary = json.loads(_run_main(cfg, tmp_path))
    assert summary["skipped_done"] == len(set.intersection(*partial.values()))
    for name, store in open_stores(out).items():
        got = _ids_in_shards(store)
        assert len(got) == len(set(got)) == N - 1, name  # nothing lost, nothing twice
        assert broken not in got and partial[name] <= set(got)


def _stores_by_folder(out: Path) -> dict[str, FeatureStore]:
    """The stores of a killed run (``stores.json`` is written only when a run finishes)."""
    return {p.name.split("-")[0]: FeatureStore(p) for p in out.glob("*-*") if (p / "manifest.json").is_file()}


def _run_main(cfg, tmp_path) -> str:
    """The argparse entry point (as `ray job submit` runs it), with the config's overrides."""
    summary = tmp_path / "summary.json"
    e = cfg.model.experts
    args = [
        "--config",
        str(REPO / "ray_jobs/configs/tiny.yaml"),
        "--summary",
        str(summary),
        *_overrides(
            cfg.data.root,
            {
                "clip": e["appearance"].pretrained_path,
                "videomae": e["motion"].pretrained_path,
                "ast": e["audio"].pretrained_path,
            },
            cfg.extract.output_dir,
        ),
    ]
    assert main(args) == 0
    return summary.read_text()


def test_changed_decode_setting_is_a_new_store(setup, ray_local, tmp_path):
    root, models, _ = setup
    base = _overrides(root, models, tmp_path / "store", "extract.experts=[appearance]")
    run_extract(load_config(REPO / "ray_jobs/configs/tiny.yaml", base))
    first = open_stores(tmp_path / "store")["appearance"].path
    run_extract(load_config(REPO / "ray_jobs/configs/tiny.yaml", [*base, "extract.frame_size=24"]))
    second = open_stores(tmp_path / "store")["appearance"].path
    assert first != second and first.exists()  # the old store stays; stores.json points at the new one
    assert FeatureStore(first).manifest["identity"]["decode"]["frame_size"] == 32
    assert FeatureStore(second).manifest["identity"]["decode"]["frame_size"] == 24


def test_feature_dataset_reads_the_store_without_videos(setup, ray_local, tmp_path):
    """The jobs' one builder (ray_jobs.data.build_video_dataset) on a store alone: shard groups read by
    Ray Data tasks -> per-video model inputs keyed by video id, no video opened; rows equal the plain
    per-video transform's; the clip with no features at all is flagged, not dropped."""
    import dataclasses

    from etva.config import DataConfig
    from etva.data import load_records
    from etva.data.example import make_video_example
    from ray_jobs.data import build_video_dataset

    root, models, broken = setup
    cfg = load_config(REPO / "ray_jobs/configs/tiny.yaml", _overrides(root, models, tmp_path / "store"))
    extract_local(cfg, extraction_rows(cfg))
    records = [r for split in ("train", "test") for r in load_records("msrvtt", root, split, "1k-A")]
    assert broken in {r.video_id for r in records}
    records = [
        dataclasses.replace(r, video_path=str(tmp_path / "gone" / f"{r.video_id}.mp4")) for r in records
    ]
    data = DataConfig(decode_clips=False, feature_store=str(tmp_path / "store"), max_feature_tokens=3)
    ds = build_video_dataset(records, data, cfg.ray)
    rows = {
        int(i): b for b in ds.iter_batches(batch_size=100, batch_format="numpy") for i in b["video_index"]
    }
    (batch,) = {id(b): b for b in rows.values()}.values()
    assert "frames" not in batch and len(batch["video_index"]) == len(records)
    assert batch["feat/appearance"].shape[1:] == (3, 12)
    for j, i in enumerate(batch["video_index"]):
        rec = records[int(i)]
        if rec.video_id == broken:
            assert not batch["ok"][j]
            continue
        assert batch["ok"][j]
        ref = make_video_example(rec, data)
        for k, v in ref.items():
            np.testing.assert_array_equal(batch[k][j], v, err_msg=k)
