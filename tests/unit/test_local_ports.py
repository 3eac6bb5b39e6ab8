"""The local cluster's ports (cluster/local_state.py, cluster/local.py): named ports are checked before
anything starts, unnamed agent and client ports are picked outside Ray's worker range, the command line
names every one of them. No server is started here: a listening socket stands for a taken port."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster import local, local_procs, local_state
from cluster.local_state import MLFLOW_PORTS, RAY_PORTS, RAY_WORKER_PORTS, PortError

PICKED = ("ray_client_port", "dashboard_agent_port", "dashboard_agent_grpc_port", "metrics_export_port")


@contextlib.contextmanager
def listening() -> Iterator[int]:
    """A port that is taken while the block runs (a socket listening on it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _settings(tmp_path: Path, **ports: int) -> local_state.LocalSettings:
    ray_port, dash, mlflow_port = local_state.free_ports(3)
    values = {"ray_port": ray_port, "dashboard_port": dash, "mlflow_port": mlflow_port, **ports}
    return local_state.LocalSettings(state_dir=tmp_path / "state", ray_temp_dir=tmp_path / "ray", **values)


def test_unnamed_ports_are_picked_free_distinct_and_outside_the_worker_range(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    resolved = local_state.resolve_ports(s, RAY_PORTS + MLFLOW_PORTS)
    ports = [getattr(resolved, role.field) for role in RAY_PORTS + MLFLOW_PORTS]
    assert len(set(ports)) == len(ports), ports
    assert [resolved.ray_port, resolved.dashboard_port, resolved.mlflow_port] == [
        s.ray_port,
        s.dashboard_port,
        s.mlflow_port,
    ]
    for field in PICKED:
        port = getattr(resolved, field)
        assert getattr(s, field) is None and port not in RAY_WORKER_PORTS
        default = next(r.ray_default for r in RAY_PORTS + MLFLOW_PORTS if r.field == field)
        assert port == default or port not in local_state.ephemeral_ports(), (field, port)  # Ray's default kept
        assert local_procs.port_free("0.0.0.0", port), (field, port)


def test_picked_ports_are_outside_the_kernels_ephemeral_range() -> None:
    """An outgoing connection of another process never takes a picked port while its service restarts
    (a head killed and started again on its own ports once found its Jobs API port taken that way)."""
    eph = local_state.ephemeral_ports()
    assert len(eph) > 1000 and eph.start >= 1024
    ports = local_state.free_ports(8)
    assert len(set(ports)) == 8
    assert not [p for p in ports if p in eph or p in RAY_WORKER_PORTS], (ports, eph)
    assert all(local_procs.port_free("0.0.0.0", p) for p in ports)


def test_a_free_ray_default_is_kept_and_a_taken_one_replaced() -> None:
    (free,) = local_state.free_ports(1)
    assert local_state.pick_port(free, set()) == free
    assert local_state.pick_port(free, {free}) != free  # already given to another role
    with listening() as taken:
        other = local_state.pick_port(taken, set())
    assert other != taken and other not in RAY_WORKER_PORTS


@pytest.mark.parametrize("field", ["dashboard_agent_port", "ray_client_port", "ray_port"])
def test_a_taken_named_port_is_refused_naming_the_port_and_its_flag(tmp_path: Path, field: str) -> None:
    role = next(r for r in RAY_PORTS if r.field == field)
    with listening() as taken:
        with pytest.raises(PortError) as err:
            local_state.resolve_ports(_settings(tmp_path, **{field: taken}), RAY_PORTS)
    message = str(err.value)
    assert f"port {taken} ({role.what}) is already in use" in message
    assert role.option.split()[0] in message and "nothing was started" in message


def test_a_named_port_inside_rays_worker_range_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PortError, match="port 15000 .*worker port range 10002-19999.*--metrics-export-port"):
        local_state.resolve_ports(_settings(tmp_path, metrics_export_port=15000), RAY_PORTS)


def test_a_port_named_twice_is_refused(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    s.dashboard_agent_port = s.dashboard_port
    with pytest.raises(PortError, match=rf"port {s.dashboard_port} is named twice \(--dashboard-port"):
        local_state.resolve_ports(s, RAY_PORTS)


def test_start_checks_every_port_before_starting_anything(tmp_path: Path, monkeypatch, capsys) -> None:
    """A taken MLflow port stops the start of the Ray head too: nothing is spawned, no state is written."""
    spawned: list[list[str]] = []

    def spawn(cmd, env, log_path):
        spawned.append(cmd)
        raise AssertionError(f"started {cmd[:2]} although a port is taken")

    monkeypatch.setattr(local_procs, "spawn_detached", spawn)
    with listening() as taken:
        s = _settings(tmp_path, mlflow_port=taken)
        with pytest.raises(PortError, match=f"port {taken} .*--mlflow-port"):
            local.start_all(s)
        named = ["--ray-port", str(s.ray_port), "--dashboard-port", str(s.dashboard_port)]
        argv = ["start", "--state-dir", str(s.state_dir), *named, "--metrics-export-port", str(taken)]
        assert local.main([*argv, "--ray"]) == 1
    assert f"error: port {taken} (Prometheus metrics export) is already in use" in capsys.readouterr().err
    assert spawned == [] and not s.state_dir.exists()


def test_the_command_line_names_every_port(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ETVA_RAY_PORT", "7000")
    monkeypatch.setenv("ETVA_MLFLOW_PORT", "7001")
    flags = [flag for flag, _ in local.PORT_FLAGS]
    argv = ["start", "--state-dir", str(tmp_path)]
    argv += [arg for i, flag in enumerate(flags[1:]) for arg in (flag, str(40000 + i))]  # all but --ray-port
    s = local.settings_from_args(local.build_parser().parse_args(argv))
    assert s.ray_port == 7000 and s.state_dir == tmp_path.resolve()  # the variable when no flag names it
    fields = ["dashboard_port", "mlflow_port", *PICKED]
    assert [getattr(s, f) for f in fields] == [40000 + i for i in range(len(fields))]  # the flag wins
    assert len(flags) == len(RAY_PORTS + MLFLOW_PORTS)  # one flag per port role


def test_the_head_is_ready_only_when_its_agent_listens(tmp_path: Path) -> None:
    """The agent's port file in the session folder: missing -> not yet; -1 (it could not listen, so every
    submission would answer "No available agent") -> a PortError naming the port."""
    s = _settings(tmp_path, dashboard_agent_port=52999)
    session = s.temp_dir / "session_latest"
    session.mkdir(parents=True)
    (s.temp_dir / "ray_current_cluster").write_text("127.0.0.1:6380\n")
    assert local_state.agent_listen_port(s) is None
    assert local._ray_ready(s, "token") is None
    (session / "dashboard_agent_listen_port_0a1b").write_text("-1")
    assert local_state.agent_listen_port(s) == -1
    with pytest.raises(PortError, match="could not listen on port 52999.*--dashboard-agent-listen-port"):
        local._ray_ready(s, "token")
    (session / "dashboard_agent_listen_port_0a1b").write_text("52999")
    assert local_state.agent_listen_port(s) == 52999
