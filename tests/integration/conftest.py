"""Integration fixtures: a private local Ray head (token auth) and MLflow server on free ports.

`local_cluster` (session scope) yields a `cluster.local.LocalCluster`:
    .ray_address    GCS host:port for `ray.init(address=...)`
    .dashboard_url  Jobs API (`JobSubmissionClient`, `ray job submit --address`)
    .mlflow_uri     MLflow tracking server
    .env            RAY_ADDRESS, RAY_API_SERVER_ADDRESS, RAY_AUTH_MODE, RAY_AUTH_TOKEN_PATH,
                    MLFLOW_TRACKING_URI; `.subprocess_env()` = os.environ + these
and always stops both servers afterwards, failing the session if any of their processes survive.
`local_cluster_factory` gives a context manager for a further private cluster (e.g. to test stop).
Override `local_cluster_num_cpus` in a conftest closer to a test to change the logical CPU count.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # `cluster/` is glue, not an installed package
    sys.path.insert(0, str(REPO_ROOT))

from cluster import local, local_state  # noqa: E402

free_ports, make_settings = local_state.free_ports, local_state.private_settings


@contextlib.contextmanager
def running_cluster(num_cpus: int, ray: bool = True, mlflow: bool = True) -> Iterator[local.LocalCluster]:
    """Start a private cluster; on exit stop it (also after errors) and check nothing is left."""
    settings = make_settings(num_cpus)
    cluster = local.LocalCluster(settings.state_dir, settings=settings)
    try:
        cluster = local.start_all(settings, ray=ray, mlflow=mlflow)
        yield cluster
    finally:
        left = local.stop_all(settings, ray=ray, mlflow=mlflow)
        survivors = local.leftover_processes(cluster)
        shutil.rmtree(settings.state_dir, ignore_errors=True)
        shutil.rmtree(settings.temp_dir, ignore_errors=True)
        assert not any(left.values()) and not survivors, f"processes left running: {left} {survivors}"


@pytest.fixture(scope="session")
def local_cluster_num_cpus() -> int:
    """Logical CPUs of the test head: Ray Data decode + 2 Train workers starve on 2 (docs/platform.md)."""
    return 4


@pytest.fixture(scope="session")
def local_cluster_factory():
    """`running_cluster(num_cpus, ray=True, mlflow=True)`: a context manager for a private cluster."""
    return running_cluster


@pytest.fixture(scope="session")
def local_cluster(local_cluster_num_cpus: int) -> Iterator[local.LocalCluster]:
    with running_cluster(local_cluster_num_cpus) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def team_server():
    """A team tracking server: PostgreSQL (Debian package, unprivileged user, 127.0.0.1) and
    `cluster/mlflow/mlflow-server.sh` with basic-auth on it (cluster/team_server.py)."""
    from cluster.team_server import running_team_server

    pg_port, port = free_ports(2)
    with running_team_server(pg_port, port) as server:
        yield server
