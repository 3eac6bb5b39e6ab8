"""Multi-node training, simulated on one machine with Ray's test cluster (a head + several raylets).

Covers: the two Train workers placed on different nodes (SPREAD) train and evaluate end to end; a node
hosting a Train worker removed mid-training -> the run restarts from its last checkpoint on the nodes
left and reports every epoch exactly once; Ray Data decode tasks run on more than one node and each
worker's shard yields its own, disjoint share of the videos. Upstream quirks: `multinode_cluster.py`.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

from etva.config import load_config
from etva.data.synth import generate_dataset

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # conftest does the same; the helper module lives beside this file
from tests.integration import multinode_cluster as mc  # noqa: E402

pytestmark = pytest.mark.integration

# a worker node: one 0.5-CPU Train worker, 0.25-CPU decode tasks and 1-CPU shuffle tasks (module notes)
NODE = {"num_cpus": 2}
FIT_S = 200  # deadline of one trainer.fit() (a hang fails instead of blocking CI)


@pytest.fixture(scope="module", autouse=True)
def _pickle_helpers_by_value():
    """Workers unpickle the helper's loop functions without needing this folder on their sys.path."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(mc)
    yield
    ray.cloudpickle.unregister_pickle_by_value(mc)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    s = load_config(REPO / "ray_jobs/configs/tiny.yaml").data.synth
    generate_dataset(root, 24, 0, cfg=s, workers=2, progress=False)
    return root


@pytest.fixture(scope="module")
def cluster(tiny_data):
    """Head (0 CPUs) + 3 worker nodes; the node-loss test removes one, the others need only two."""
    nodes = {name: {**NODE, "resources": {name: 1}} for name in ("node_a", "node_b", "node_c")}
    with mc.simulated_cluster(nodes) as cluster:
        yield cluster


def _cfg(tiny_data: Path, storage: Path, *overrides: str):
    from ray_jobs.driver import resolve_paths

    return resolve_paths(
        load_config(
            REPO / "ray_jobs/configs/tiny.yaml",
            [f"data.root={tiny_data}", f"ray.storage_path={storage}", "mlflow.tracking_uri=", *overrides],
        )
    )


def _reported_epochs(log: list[dict]) -> list[int]:
    return [e for entry in log for e in entry.get("report", [])]


@pytest.mark.timeout(240)
def test_train_workers_on_different_nodes(cluster, tiny_data, tmp_path):
    from ray_jobs.train import build_trainer

    cfg = _cfg(tiny_data, tmp_path / "ray", "train.epochs=2", "ray.max_failures=0")
    trainer, _ = build_trainer(cfg, "mn-spread", callbacks=[mc.report_log(tmp_path / "reports.jsonl")])
    (tmp_path / "records").mkdir()
    trainer = mc.with_spread(trainer, mc.recording_train_loop, {"record_dir": str(tmp_path / "records")})
    result = mc.fit_within(trainer, FIT_S)

    records = mc.read_records(tmp_path / "records")
    assert sorted(r["rank"] for r in records) == [0, 1], records
    nodes = {r["rank"]: cluster.node_name(r["node_id"]) for r in records}
    assert nodes[0] != nodes[1] and "head" not in nodes.values(), nodes
    assert all(r["resumed_from"] is None for r in records)
    assert sorted(result.return_value["history"]) == ["0", "1"]
    assert 0.0 <= result.metrics["val/t2v_R1"] <= 100.0
    log = mc.read_log(tmp_path / "reports.jsonl")
    assert _reported_epochs(log) == [0, 1] and not [e for e in log if "error" in e], log


@pytest.mark.timeout(240)
def test_data_shards_spread_over_nodes(cluster, tiny_data, tmp_path):
    import json

    from ray_jobs.train import build_trainer

    cfg = _cfg(tiny_data, tmp_path / "ray")
    trainer, prepared = build_trainer(cfg, "mn-shards")
    trainer = mc.with_spread(trainer, mc.shard_loop, {"record_dir": str(tmp_path)})
    before = mc.decode_task_nodes()
    mc.fit_within(trainer, FIT_S)
    after = mc.decode_task_nodes()

    ran = {cluster.node_name(n) for n, count in after.items() if count > before.get(n, 0)}
    assert len(ran) >= 2 and "head" not in ran, f"decode tasks ran on {ran}"
    shards = [json.loads((tmp_path / f"shard-rank{r}.json").read_text()) for r in (0, 1)]
    assert cluster.node_name(shards[0]["node_id"]) != cluster.node_name(shards[1]["node_id"])
    frame = str((cfg.data.num_frames, cfg.data.frame_size, cfg.data.frame_size, 3))
    for split, n in (("train", len(prepared["train"].records)), ("val", len(prepared["val"].records))):
        a, b = shards[0][split], shards[1][split]
        assert a and b, f"{split}: a worker's shard was empty"
        assert not set(a) & set(b) and set(a + b) <= set(range(n)), f"{split}: a video served twice"
        if split == "train":  # Train splits with equal=True: equal shards, at most world_size - 1 left out
            assert len(a) == len(b) and n - len(a + b) < 2, (split, n, len(a), len(b))
        else:  # evaluation: one exact shard per rank, every video scored
            assert sorted(a + b) == list(range(n)), (split, n, len(a), len(b))
        assert shards[0][f"{split}_frames"] == shards[1][f"{split}_frames"] == [frame]


def _remove_worker_node_after_first_checkpoint(cluster, run_dir: Path, tmp: Path, out: dict) -> None:
    """Watcher thread: once epoch 0's checkpoint is committed (the workers wait at the gate), remove the
    node hosting rank 0, then open the gate."""
    records, log = tmp / "records", tmp / "reports.jsonl"
    try:
        deadline = time.time() + FIT_S
        while not ((run_dir / "epoch_0000").is_dir() and [0] in [e.get("report") for e in mc.read_log(log)]):
            if time.time() > deadline:
                raise TimeoutError(f"no committed epoch-0 checkpoint within {FIT_S} s")
            time.sleep(0.2)
        rank0 = next(r for r in mc.read_records(records) if r["rank"] == 0)
        out["removed"] = cluster.node_name(rank0["node_id"])
        out["removed_id"] = rank0["node_id"]
        out["start"] = time.time()
        cluster.remove(out["removed"])
        out["done"] = time.time()
    except BaseException as e:  # re-raised by the test
        out["error"] = e
    finally:
        (tmp / "gate").touch()


@pytest.mark.timeout(300)
def test_node_removed_mid_training_resumes_from_checkpoint(cluster, tiny_data, tmp_path):
    import ray

    from ray_jobs.train import build_trainer

    assert len(cluster.nodes) == 3, "needs a spare node to reschedule onto"
    cfg = _cfg(tiny_data, tmp_path / "ray", "train.epochs=3", "ray.max_failures=2", "ray.keep_recent=5")
    records, log_path, out = tmp_path / "records", tmp_path / "reports.jsonl", {}
    records.mkdir()
    trainer, _ = build_trainer(cfg, "mn-node-lost", callbacks=[mc.report_log(log_path)])
    # every worker waits after reporting epoch 0 until the watcher has removed the node (gate file)
    hold = {"hold_after_epoch": 0, "gate_file": str(tmp_path / "gate"), "hold_s": FIT_S}
    trainer = mc.with_spread(trainer, mc.recording_train_loop, {"record_dir": str(records), **hold})
    watcher = threading.Thread(
        target=_remove_worker_node_after_first_checkpoint,
        args=(cluster, tmp_path / "ray/mn-node-lost", tmp_path, out),
        daemon=True,
    )
    watcher.start()
    result = mc.fit_within(trainer, FIT_S)
    watcher.join(timeout=30)
    assert "error" not in out, repr(out.get("error"))
    assert out["removed_id"] not in {n["NodeID"] for n in ray.nodes() if n["Alive"]}

    log = mc.read_log(log_path)
    assert _reported_epochs(log) == [0, 1, 2], f"every epoch reported exactly once: {log}"
    assert sorted(result.return_value["history"]) == ["0", "1", "2"]
    starts = mc.read_records(records)
    first, restarted = starts[:2], [r for r in starts if r["time"] > out["start"]]
    assert len(starts) == 4 and all(r["resumed_from"] is None for r in first), starts
    assert sorted(r["rank"] for r in restarted) == [0, 1], f"both workers restart once: {starts}"
    lost = {out["removed_id"], cluster.cluster.head_node.node_id}
    assert not {r["node_id"] for r in restarted} & lost, "a worker restarted on a lost node or the head"
    # both resumed from the last checkpoint committed before the node was gone: epoch 0's
    before = [e["checkpoint"] for e in log if e.get("checkpoint") and e["time"] < out["done"]]
    assert before == ["epoch_0000"], log
    assert {r["resumed_from"] for r in restarted} == {"epoch_0000"}, restarted
    errors = [e["error"] for e in log if "error" in e]
    assert any(out["removed_id"] in msg for err in errors for msg in err.values()), (
        f"no failure named the lost node: {log}"
    )
