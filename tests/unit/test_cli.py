"""The `etva` command line: every command registered with useful --help, lazy imports, the commands that
`etva train|tune|eval` build (local subprocess or `ray job submit`), and one-line user errors (exit 2)."""

from __future__ import annotations

import http.server
import json
import os
import shlex
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from etva.cli import COMMANDS, main
from etva.config import config_to_dict, load_config

REPO = Path(__file__).resolve().parents[1].parent
TINY = REPO / "ray_jobs/configs/tiny.yaml"


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        ok = self.path in ("/api/gcs_healthz", "/health")
        self.send_response(200 if ok else 404)
        self.end_headers()
        self.wfile.write(b"success" if ok else b"")

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture(scope="module")
def fake_server():
    """An HTTP server answering the Jobs API health check and MLflow's /health with 200."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def env(monkeypatch, tmp_path):
    """No cluster or MLflow configured; a small dataset folder at ``tmp_path/ds``."""
    for var in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "MSRVTT_data.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _closed_port_url() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def _command(capsys) -> list[str]:
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if x.startswith("would run: "))
    return shlex.split(line[len("would run: ") :])


def test_every_command_is_registered_with_help(capsys):
    assert {"data", "train", "tune", "eval", "best", "search", "index", "serve"} <= set(COMMANDS)
    for argv, words in (
        (["train"], "resumes"),
        (["tune"], "search space"),
        (["eval"], "models:/"),
        (["search"], "brought up to date"),
        (["index"], "never mixes two models"),
        (["serve"], "without dropping requests"),
        (["best"], "champion"),
        (["data", "check"], "decode every referenced video"),
        (["data", "synth"], "shapes"),
    ):
        with pytest.raises(SystemExit) as e:
            main([*argv, "--help"])
        out = " ".join(capsys.readouterr().out.split())
        assert e.value.code == 0 and words in out, argv


def test_cli_start_imports_no_ray_mlflow_or_torch():
    code = (
        "import sys; from etva.cli import build_parser; build_parser();"
        "print([m for m in ('ray', 'mlflow', 'torch', 'av') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert out.stdout.strip() == "[]", out.stderr


def test_train_local_builds_the_entry_point_command(env, capsys):
    rc = main(
        [
            "train",
            "--config",
            str(TINY),
            "--local",
            "--dry-run",
            "--run-name",
            "r1",
            "data.root=ds",
            "train.epochs=1",
        ]
    )
    assert rc == 0
    cmd = _command(capsys)
    assert cmd[:5] == [sys.executable, "-m", "ray_jobs.train", "--config", str(TINY)]
    assert cmd[5:] == [
        "--run-name",
        "r1",
        "data.root=ds",
        "train.epochs=1",
        f"data.root={env / 'ds'}",
        "ray.address=local",
    ]


def test_local_run_executes_and_returns_the_exit_code(env, tmp_path, capfd):
    work = tmp_path / "work"
    (work / "ray_jobs").mkdir(parents=True)
    (work / "ray_jobs" / "__init__.py").write_text("")
    (work / "ray_jobs" / "evaluate.py").write_text("import sys; print('ARGS', sys.argv[1:]); sys.exit(3)\n")
    ckpt = _fake_checkpoint(tmp_path / "ckpt")
    rc = main(["eval", "--checkpoint", str(ckpt), "--split", "test", "--working-dir", str(work)])
    out = capfd.readouterr().out
    assert rc == 3 and f"ARGS ['--checkpoint', '{ckpt}', '--split', 'test', 'ray.address=local']" in out


def test_submit_builds_ray_job_submit_with_mlflow_env(env, fake_server, monkeypatch, capsys):
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", fake_server)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", fake_server)
    assert main(["train", "--config", str(TINY), "--no-wait", "--dry-run", "data.root=ds"]) == 0
    cmd = _command(capsys)
    sep = cmd.index("--")
    assert Path(cmd[0]).name == "ray" and cmd[1:7] == [
        "job",
        "submit",
        "--address",
        fake_server,
        "--working-dir",
        str(REPO),
    ]
    assert "--no-wait" in cmd[:sep]
    env_json = json.loads(cmd[cmd.index("--runtime-env-json") + 1])
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO
    ).stdout.strip()
    assert env_json == {"env_vars": {"MLFLOW_TRACKING_URI": fake_server, "ETVA_GIT_COMMIT": commit}}
    assert cmd[sep + 1 :] == [
        "python", "-m", "ray_jobs.train", "--config", "ray_jobs/configs/tiny.yaml", "data.root=ds",
        f"data.root={env / 'ds'}", f"mlflow.tracking_uri={fake_server}",
    ]  # fmt: skip


def test_submit_passes_a_profiling_request_to_the_job(env, fake_server, monkeypatch, capsys):
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", fake_server)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", fake_server)
    monkeypatch.setenv("ETVA_PROFILE_EPOCH", "2")
    monkeypatch.setenv("ETVA_PROFILE_DIR", "/shared/profiles")
    assert main(["train", "--config", str(TINY), "--no-wait", "--dry-run", "data.root=ds"]) == 0
    cmd = _command(capsys)
    env_vars = json.loads(cmd[cmd.index("--runtime-env-json") + 1])["env_vars"]
    assert env_vars["ETVA_PROFILE_EPOCH"] == "2" and env_vars["ETVA_PROFILE_DIR"] == "/shared/profiles"


def test_tune_validates_the_space_and_passes_it(env, fake_server, tmp_path, capsys):
    rc = main(["tune", "--address", fake_server, "--config", str(TINY), "--space", str(REPO / "tuning/spaces/clusters.yaml"),
               "--name", "sw", "--dry-run", "data.root=ds"])  # fmt: skip
    cmd = _command(capsys)
    assert rc == 0 and cmd[cmd.index("-m") + 1] == "tuning.sweep"
    assert cmd[cmd.index("--space") + 1] == str(REPO / "tuning/spaces/clusters.yaml") and "--name" in cmd
    bad = tmp_path / "bad.yaml"
    bad.write_text("model.not_a_key: {choice: [1, 2]}\n")
    assert main(["tune", "--local", "--config", str(TINY), "--space", str(bad), "data.root=ds"]) == 2
    assert "not_a_key" in capsys.readouterr().err


def _fake_checkpoint(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "model.pt").write_bytes(b"")
    cfg = config_to_dict(load_config(TINY))
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize(
    "argv, message, hint",
    [
        (["train", "--local", "model.nope=1"], "unknown key 'model.nope'", "ray_jobs/configs"),
        (["train", "--local", "--config", "missing.yaml"], "--config missing.yaml: no such file", "configs"),
        (["train", "--local", "data.root=absent"], "no dataset there", "etva data synth"),
        (["train", "--address", "CLOSED", "data.root=ds"], "Ray cluster", "start_local.sh"),
        (["train", "--submit", "data.root=ds"], "no Ray cluster configured", "start_local.sh"),
        (["eval", "--local", "--checkpoint", "nowhere"], "not a checkpoint directory", "epoch_NNNN"),
        (["eval", "--local", "--checkpoint", "models:/m@champion"], "needs a tracking server", "MLFLOW"),
        (["eval", "--local", "--checkpoint", "CKPT", "data.nope=1"], "unknown key 'data.nope'", "keys"),
    ],
)
def test_user_errors_are_one_line_and_a_hint(env, argv, message, hint, capsys):
    closed = _closed_port_url()
    argv = [a.replace("CLOSED", closed) for a in argv]
    if "CKPT" in argv:
        argv[argv.index("CKPT")] = str(_fake_checkpoint(env / "ckpt"))
    if argv[0] == "train" and "--config" not in argv:
        argv += ["--config", str(TINY), "data.synthesize_if_missing=false"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("etva: error: ") and message in lines[0], err
    assert lines[1].startswith("hint: ") and hint in lines[1], err


def test_unreachable_mlflow_server_is_a_user_error(env, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", _closed_port_url())
    assert main(["train", "--local", "--config", str(TINY), "data.root=ds"]) == 2
    err = capsys.readouterr().err
    assert "MLflow server" in err and "not reachable" in err and "Traceback" not in err


def test_etva_entry_point_runs_as_a_program(env):
    out = subprocess.run(
        [sys.executable, "-m", "etva", "train", "--local", "--config", str(TINY), "oops"],
        capture_output=True, text=True, cwd=REPO, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert out.returncode == 2 and "expected the form key.path=value" in out.stderr
    assert "Traceback" not in out.stderr


def test_seam_without_the_job_layer_is_a_usage_error(monkeypatch):
    """ray_jobs/ and tuning/ not importable: every seam function is a UsageError naming what is missing."""
    from etva.cli import UsageError, seam

    for name in ("tuning", "tuning.space", "tuning.best", "ray_jobs", "ray_jobs.evaluate"):
        monkeypatch.setitem(sys.modules, name, None)  # makes `import name` raise ModuleNotFoundError
    calls = {
        "'etva tune' needs the tuning package": lambda: seam.load_space("s.yaml", None),
        "'etva best' needs the tuning.best module": seam.best_error_type,
        "'etva best' needs the tuning.best module (": lambda: seam.best_main("x", "", 3, ""),
        "MLflow URIs need the ray_jobs.evaluate module": lambda: seam.fetch_checkpoint(
            "models:/m@a", Path(".")
        ),
    }
    for message, call in calls.items():
        with pytest.raises(UsageError) as e:
            call()
        assert str(e.value).startswith(message) and "repository root" in e.value.hint


def test_seam_reaches_the_job_layer(tmp_path):
    from etva.cli import seam
    from etva.config import load_config

    assert seam.best_error_type().__module__ == "tuning.best"
    space = seam.load_space(str(REPO / "tuning/spaces/clusters.yaml"), load_config(TINY))
    assert space.dims and all("." in d.key for d in space.dims)
    ckpt = _fake_checkpoint(tmp_path / "ckpt")
    assert seam.fetch_checkpoint(str(ckpt), tmp_path / "dl") == ckpt.resolve()


def test_study_validates_space_and_config_and_passes_its_options(env, capsys):
    rc = main(["study", "--local", "--name", "st", "--seeds", "2", "--variants", "global_only,shared_centres",
               "--dry-run", "data.root=ds"])  # fmt: skip
    cmd = _command(capsys)
    assert rc == 0 and cmd[cmd.index("-m") + 1] == "tuning.study"
    assert cmd[cmd.index("--config") + 1] == str(REPO / "ray_jobs/configs/study.yaml")
    assert cmd[cmd.index("--space") + 1] == str(REPO / "tuning/spaces/ablations.yaml")
    assert cmd[cmd.index("--seeds") + 1] == "2" and cmd[cmd.index("--variants") + 1] == "global_only,shared_centres"
    assert main(["study", "--local", "--variants", "global_only,nope", "data.root=ds"]) == 2
    assert "unknown ['nope']" in capsys.readouterr().err
    assert main(["study", "--local", "--config", str(TINY), "data.root=ds", "data.val_from_train=0"]) == 2
    assert "data.val_from_train" in capsys.readouterr().err
