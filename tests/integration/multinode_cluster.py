"""A simulated multi-node Ray cluster on one machine for integration tests (`ray.cluster_utils.Cluster`).

`simulated_cluster(nodes)` starts a head raylet with 0 CPUs (it hosts the driver, the Train controller
and Ray Data's split coordinator, never a Train worker or a decode task) plus one raylet per entry of
`nodes` (kwargs of `Cluster.add_node`, e.g. `{"num_cpus": 2, "resources": {"node_a": 1}}`), connects
the driver, and on exit shuts everything down and fails if any process it started survives.

Upstream behaviour worked around here (ray 2.60, seen on a 2-core machine) — the one place it is written down:

- Token auth: `Cluster` starts raylets in-process (`ray._private.node.Node`) and never turns token auth
  on by itself; its mode follows `RAY_AUTH_MODE` as this process's cached RayConfig saw it. An earlier
  `ray.init()` in the same pytest process sets `RAY_AUTH_MODE=token` in `os.environ` (local clusters
  default to token auth) and uses `~/.ray/auth_token`. We pin the mode explicitly: `RAY_AUTH_MODE=token`
  with a private token file (`RAY_AUTH_TOKEN_PATH`), re-read by `ray._raylet.Config.initialize("")` and
  `AuthenticationTokenLoader.reset_cache()`, and restore the previous values afterwards.
- `Cluster.add_node` writes the head's address to `<RAY_TMPDIR or /tmp>/ray/ray_current_cluster`, the
  file `ray.init("auto")` and `ray status` read; on a shared machine that would redirect other people's
  tools to this test cluster. We point `RAY_TMPDIR` at a private short folder (AF_UNIX socket paths
  must stay under 107 bytes), so the file, sessions and logs stay in it.
- The head's dashboard defaults to port 8265 (+ retries), which a user's head may hold: a free port is
  passed instead. The dashboard is kept: Train V2's placement-group cleaner and the state API need it.
- `RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.2`: each `ray.train.report` otherwise waits for the controller's
  2 s poll (docs/platform.md); Train propagates the variable to the controller and the workers.
- `ScalingConfig` defaults to `placement_strategy="PACK"`: two 0.5-CPU workers then share one 1-CPU
  node. Tests that want workers on different nodes pass `"SPREAD"` (`with_spread`).
- Ray Data's `random_shuffle` (the train split's first stage) runs its map/reduce tasks with the
  default `num_cpus=1`. On nodes whose free CPU is below 1 once a Train worker holds its share (e.g.
  1-CPU nodes with 0.5-CPU workers) they never schedule: `ray status` shows `Pending Demands:
  {'CPU': 1.0}` and the run hangs silently before its first batch. The simulated nodes get 2 logical
  CPUs each (a fractional `num_cpus` for the shuffle in `ray_jobs.data` would lift this).
- pytest-timeout's signal method cannot interrupt a driver blocked in `trainer.fit()` (a `ray.get` in
  C++): `fit_within` runs the fit in a thread with a deadline, so a hang fails the test with the
  cluster's resources, and the fixture still shuts the cluster down.
- `Cluster.remove_node`/`shutdown` kill the processes each node started itself (raylet, agents, GCS);
  the worker processes the raylet forked are only checked indirectly. `ProcessTracker` records every
  process the nodes started and all their descendants before each removal and before shutdown, and
  the fixture fails unless all of them have exited within 20 s.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

from cluster import local_state


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (from /proc)."""
    kids, out, todo = _children_map(), set(), [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class ProcessTracker:
    """Remembers the processes the cluster's nodes started (their own and every descendant: raylets,
    GCS, dashboard, agents, workers) so the test can prove none outlives the cluster."""

    def __init__(self) -> None:
        self.seen: dict[int, str] = {}

    def snapshot(self, nodes) -> None:
        roots = {
            info.process.pid
            for node in nodes
            for infos in node.all_processes.values()
            for info in infos
            if info.process is not None
        }
        for pid in roots | {d for r in roots for d in descendants(r)}:
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
            except OSError:
                continue
            self.seen.setdefault(pid, cmd)

    def survivors(self, timeout: float = 20.0) -> dict[int, str]:
        deadline = time.time() + timeout
        while True:
            left = {pid: cmd for pid, cmd in self.seen.items() if _alive(pid)}
            if not left or time.time() > deadline:
                return left
            time.sleep(0.25)


@contextlib.contextmanager
def private_ray_env(state_dir: Path) -> Iterator[None]:
    """Token auth with a private token, a private RAY_TMPDIR, fast Train reports; restored on exit."""
    from ray._raylet import AuthenticationTokenLoader, Config

    token = state_dir / "auth_token"
    token.write_text(os.urandom(32).hex())
    token.chmod(0o600)
    env = {
        "RAY_TMPDIR": str(state_dir),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    }
    try:
        with mock.patch.dict(os.environ, env):  # the previous values come back on exit
            Config.initialize("")
            AuthenticationTokenLoader.instance().reset_cache()
            yield
    finally:  # after the restore: Ray reads the outer environment again
        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()


class SimulatedCluster:
    """A started `Cluster` with named worker nodes; `remove(name)` kills one like a lost machine."""

    def __init__(self, cluster, nodes: dict, tracker: ProcessTracker, state_dir: Path):
        self.cluster = cluster
        self.nodes = nodes  # name -> ray._private.node.Node
        self.tracker = tracker
        self.state_dir = state_dir

    def node_name(self, node_id: str) -> str:
        """Our name of a node from its Ray node id ("head" for the head)."""
        if node_id == self.cluster.head_node.node_id:
            return "head"
        return next(name for name, node in self.nodes.items() if node.node_id == node_id)

    def remove(self, name: str) -> None:
        self.tracker.snapshot(self.cluster.list_all_nodes())
        self.cluster.remove_node(self.nodes.pop(name))


@contextlib.contextmanager
def simulated_cluster(nodes: dict[str, dict], state_dir: Path | None = None) -> Iterator[SimulatedCluster]:
    """Head (0 CPUs) + named worker raylets on this machine; the driver connected; torn down on exit."""
    import ray
    from ray.cluster_utils import Cluster

    own_dir = state_dir is None
    state_dir = Path(tempfile.mkdtemp(prefix="etva-mn-", dir="/tmp")) if own_dir else state_dir
    tracker = ProcessTracker()
    cluster = None
    try:
        with private_ray_env(state_dir):
            cluster = Cluster(
                initialize_head=True,
                head_node_args={
                    "num_cpus": 0, "include_dashboard": True, "dashboard_port": local_state.free_ports(1)[0]
                },
            )
            started = {name: cluster.add_node(**args) for name, args in nodes.items()}
            cluster.wait_for_nodes()
            ray.init(address=cluster.address, log_to_driver=False)
            try:
                yield SimulatedCluster(cluster, started, tracker, state_dir)
            finally:
                tracker.snapshot(cluster.list_all_nodes())
                ray.shutdown()
                cluster.shutdown()
                cluster = None
    finally:
        if cluster is not None:  # start-up failed half way
            tracker.snapshot(cluster.list_all_nodes())
            ray.shutdown()
            cluster.shutdown()
        left = tracker.survivors()
        if own_dir:
            shutil.rmtree(state_dir, ignore_errors=True)
        assert not left, f"processes left running after the test cluster shut down: {left}"


def fit_within(trainer, seconds: float):
    """`trainer.fit()` with a deadline (see the module notes); re-raises the fit's own error."""
    import ray

    out: dict = {}

    def run() -> None:
        try:
            out["result"] = trainer.fit()
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            out["error"] = e

    thread = threading.Thread(target=run, name="trainer-fit", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(
            f"trainer.fit() still running after {seconds:.0f} s; available {ray.available_resources()} "
            f"of {ray.cluster_resources()}"
        )
    if "error" in out:
        raise out["error"]
    return out["result"]


def with_spread(trainer, train_fn, extra_loop_config: dict):
    """The same TorchTrainer (config, datasets, run config) with another loop and SPREAD placement."""
    import dataclasses

    from ray.train.torch import TorchTrainer

    return TorchTrainer(
        train_fn,
        train_loop_config={**trainer.train_loop_config, **extra_loop_config},
        scaling_config=dataclasses.replace(trainer.scaling_config, placement_strategy="SPREAD"),
        run_config=trainer.run_config,
        datasets=trainer.datasets,
        dataset_config=trainer.data_config,  # only "train" is split; evaluation splits come per rank
    )


def recording_train_loop(config: dict) -> dict:
    """`ray_jobs.recipe.train_loop_per_worker`, after writing where this worker runs and what it resumes.

    With `hold_after_epoch` and `gate_file` in the config, every worker waits after reporting that epoch
    until the gate file exists (at most `hold_s`), so a test can act between two epochs deterministically.
    """
    import ray
    import ray.train

    from ray_jobs.recipe import train_loop_per_worker

    ctx = ray.train.get_context()
    ckpt = ray.train.get_checkpoint()
    record = {
        "rank": ctx.get_world_rank(),
        "node_id": ray.get_runtime_context().get_node_id(),
        "pid": os.getpid(),
        "resumed_from": Path(ckpt.path).name if ckpt is not None else None,
        "time": time.time(),
    }
    out = Path(config["record_dir"]) / f"{time.time_ns()}-rank{record['rank']}-{os.getpid()}.json"
    out.write_text(json.dumps(record))
    if config.get("gate_file"):
        _hold_after_report(int(config["hold_after_epoch"]), Path(config["gate_file"]), config["hold_s"])
    return train_loop_per_worker(config)


def _hold_after_report(epoch: int, gate: Path, hold_s: float) -> None:
    """Wrap this worker process's `ray.train.report` (which `ray_jobs.recipe` looks up at call time)."""
    import ray.train

    report = ray.train.report

    def held_report(metrics, *args, **kwargs):
        report(metrics, *args, **kwargs)
        deadline = time.time() + hold_s
        while int(metrics.get("epoch", -1)) == epoch and not gate.exists() and time.time() < deadline:
            time.sleep(0.1)

    ray.train.report = held_report


def report_log(path: Path):
    """A `ray.train.UserCallback` appending every report and worker error to a JSON-lines file (it runs
    in the Train controller, so a file is how the test sees it)."""
    from ray.train import UserCallback

    class _ReportLog(UserCallback):
        def __init__(self, path: str):
            self.path = path

        def _write(self, entry: dict) -> None:
            with open(self.path, "a") as f:
                f.write(json.dumps({**entry, "time": time.time()}) + "\n")

        def after_report(self, run_context, metrics, checkpoint):
            epochs = sorted({int(m["epoch"]) for m in metrics if "epoch" in m})
            self._write({"report": epochs, "checkpoint": Path(checkpoint.path).name if checkpoint else None})

        def after_exception(self, run_context, worker_exceptions):
            self._write({"error": {str(r): repr(e)[:2000] for r, e in worker_exceptions.items()}})

    return _ReportLog(str(path))


def read_log(path: Path) -> list[dict]:
    p = Path(path)
    return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []


def read_records(record_dir: Path) -> list[dict]:
    """Worker start records, oldest first."""
    return [json.loads(p.read_text()) for p in sorted(Path(record_dir).glob("*.json"))]


def decode_task_nodes() -> dict[str, int]:
    """Ray node id -> number of finished Ray Data tasks that ran the decode stage there (state API)."""
    from ray.util.state import list_tasks

    counts: dict[str, int] = {}
    for task in list_tasks(detail=True, limit=10_000, raise_on_missing_output=False):
        if "decode_stage" in (task.name or "") and task.state == "FINISHED":
            counts[task.node_id] = counts.get(task.node_id, 0) + 1
    return counts


def shard_loop(config: dict) -> None:
    """Read one pass of this worker's train and val shards; write the node and the video indices seen."""
    import ray
    import ray.train

    from ray_jobs.data import eval_shard_name

    rank = ray.train.get_context().get_world_rank()
    seen: dict = {"rank": rank, "node_id": ray.get_runtime_context().get_node_id()}
    for name, dataset in (("train", "train"), ("val", eval_shard_name("val", rank))):
        seen[name], seen[f"{name}_frames"] = [], set()
        for batch in ray.train.get_dataset_shard(dataset).iter_batches(batch_size=8, batch_format="numpy"):
            seen[name] += [int(v) for v in batch["video_index"]]
            seen[f"{name}_frames"].add(str(batch["frames"].shape[1:]))
        seen[f"{name}_frames"] = sorted(seen[f"{name}_frames"])
    Path(config["record_dir"], f"shard-rank{rank}.json").write_text(json.dumps(seen))
    ray.train.report({"done": 1})
