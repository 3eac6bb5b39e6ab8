"""What the Ray cluster says to the search application: Serve's running HTTP options and applications,
and how many threads and queued requests a replica gets.

Sizing (docs/serving.md, *Concurrency*): a replica answers batches of up to :data:`MAX_BATCH` queries
(one text-encoder pass, one matrix product per availability pattern) and accepts :data:`MAX_ONGOING`
requests at once, so the router never has to back off from a full replica while a batch forms. Its
torch (and faiss) threads default to the cluster's CPUs over the replicas, capped by the CPUs of the node
it runs on; only one batch computes at a time on a replica, so those threads are not oversubscribed.
"""

from __future__ import annotations

import os

import faiss
import ray
import torch

__all__ = [
    "MAX_BATCH",
    "MAX_ONGOING",
    "BATCH_WAIT_S",
    "running_http",
    "running_apps",
    "deployed_at",
    "threads_for",
    "replica_threads",
]

MAX_BATCH = 32  # queries per batch: texts encoded together, the vectors read once per batch
MAX_ONGOING = 2 * MAX_BATCH  # requests a replica accepts at once (Serve's default, 5, capped any batch)
BATCH_WAIT_S = 0.002  # how long a lone request waits for company (ray_jobs.serve_batching)


def _client():
    """Serve's controller client, or None when Serve does not run (or Ray is not connected)."""
    if not ray.is_initialized():
        return None
    from ray.serve.context import _get_global_client  # lazy: Serve's private client, only when connected

    return _get_global_client(raise_if_no_controller_running=False)


def running_http() -> tuple[str, int] | None:
    """``(host, port)`` Serve's proxies listen on, or None when Serve does not run on this cluster."""
    client = _client()
    if client is None:
        return None
    http = client.http_config
    return str(http.host), int(http.port)


def running_apps() -> dict[str, float]:
    """``{application name: last deployed (Unix time)}`` of the Serve instance ({} when none runs)."""
    if _client() is None:
        return {}
    from ray import serve  # lazy: only with a running Serve

    return {name: float(app.last_deployed_time_s) for name, app in serve.status().applications.items()}


def deployed_at(app: str) -> float | None:
    """When ``app`` was last deployed (None when it does not run): tells one deployment from another's."""
    return running_apps().get(app)


def threads_for(replicas: int) -> int:
    """Threads per replica: the cluster's CPUs shared by ``replicas`` (1 without a connected Ray)."""
    cpus = ray.cluster_resources().get("CPU", 1.0) if ray.is_initialized() else 1.0
    return max(1, int(cpus // max(1, replicas)))


def _node_cpus() -> int:
    """CPUs Ray counts on the node of this process (0 when unknown)."""
    if not ray.is_initialized():
        return 0
    node = ray.get_runtime_context().get_node_id()
    return next((int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n["NodeID"] == node), 0)


def replica_threads(wanted: int) -> int:
    """Set this process's torch and faiss threads to ``wanted``, capped by the node's CPUs; returns it."""
    cap = len(os.sched_getaffinity(0))
    cap = min(cap, _node_cpus() or cap)
    n = max(1, min(int(wanted), cap))
    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)
    return n
