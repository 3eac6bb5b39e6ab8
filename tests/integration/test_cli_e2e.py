"""The `etva` CLI as a new user runs it, against a real local Ray head and MLflow server.

`etva data synth` -> `etva data check` -> `etva train` (submitted: RAY_API_SERVER_ADDRESS is set, as after
`source runs/local/env.sh`) -> `etva best` -> `etva search --model models:/<name>@champion` -> `etva eval`
(submitted) on the best checkpoint directory; and `etva train` against a stopped cluster fails in one line.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration
EXPERIMENT = "etva-cli-e2e"


def etva(cluster, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**cluster.subprocess_env(), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "etva", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=timeout,
    )


def _ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


def test_cli_end_to_end(local_cluster, tmp_path):
    data = tmp_path / "shapes"
    _ok(etva(local_cluster, "data", "synth", "--out", str(data), "--num-videos", "24", "--duration", "1",
             "--width", "64", "--height", "48", "--captions-per-video", "4", "--no-progress"))  # fmt: skip
    check = etva(local_cluster, "data", "check", "--root", str(data), "--no-progress")
    _ok(check)
    assert "videos decoded: 24, bad: 0" in check.stdout and check.stdout.rstrip().endswith("OK")

    out = _ok(etva(local_cluster, "train", "--config", "ray_jobs/configs/tiny.yaml", "--run-name", "cli-e2e",
                   f"data.root={data}", f"ray.storage_path={tmp_path / 'runs'}", f"mlflow.experiment={EXPERIMENT}"))  # fmt: skip
    assert "job submit --address" in out
    assert re.search(r"epoch 2/2 .*val t2v R@1", out), "per-epoch progress lines in the job log"
    ckpt = re.search(r"best checkpoint: (\S+)", out).group(1)
    assert (Path(ckpt) / "model.pt").is_file()

    _ok(etva(local_cluster, "best", "--experiment", EXPERIMENT, "--model-name", EXPERIMENT))
    videos = data / "videos" / "all"
    found = _ok(etva(local_cluster, "search", "a red circle moves left", "--model", f"models:/{EXPERIMENT}@champion",
                     "--videos", str(videos), "--index", str(tmp_path / "index"), "--top-k", "3",
                     "--html", str(tmp_path / "sheet.html"), "--no-progress"))  # fmt: skip
    assert len(re.findall(r"^\s+[123]\s+-?\d+\.\d{4}\s+video\d+\.mp4$", found, re.M)) == 3
    assert "24 encoded" in found and (tmp_path / "index" / "manifest.json").is_file()
    again = _ok(
        etva(
            local_cluster,
            "search",
            "a blue square",
            "--model",
            ckpt,
            "--videos",
            str(videos),
            "--index",
            str(tmp_path / "index"),
            "--no-progress",
        )
    )
    assert "24 cached, 0 encoded" in again  # same weights via a local dir: the index is re-used

    ev = _ok(etva(local_cluster, "eval", "--checkpoint", ckpt, "--split", "test"))
    assert re.search(r"text->video\s+\d", ev) and "MLflow run:" in ev


def test_train_against_a_stopped_cluster_is_one_line(local_cluster, tmp_path):
    env_cluster = type("C", (), {"subprocess_env": lambda self: {**local_cluster.subprocess_env(),
                                 "RAY_API_SERVER_ADDRESS": "http://127.0.0.1:9"}})()  # fmt: skip
    proc = etva(
        env_cluster, "train", "--config", "ray_jobs/configs/tiny.yaml", f"data.root={tmp_path}", timeout=600
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "not reachable" in lines[-2] and "start_local.sh" in lines[-1], (
        proc.stderr
    )


def test_train_local_beside_another_head(local_cluster, tmp_path):
    """`etva train --local` in a shell that sourced the shared head's env.sh (RAY_ADDRESS,
    RAY_API_SERVER_ADDRESS set): the job runs on its own private cluster, which never looks at the other
    head (Ray's state API inside the cluster used to fail with "Found multiple active Ray instances")."""
    data = tmp_path / "shapes"
    _ok(etva(local_cluster, "data", "synth", "--out", str(data), "--num-videos", "16", "--duration", "1",
             "--width", "64", "--height", "48", "--captions-per-video", "2", "--no-progress"))  # fmt: skip
    assert local_cluster.subprocess_env()["RAY_API_SERVER_ADDRESS"]  # the other head, as env.sh sets it
    out = _ok(etva(local_cluster, "train", "--local", "--config", "ray_jobs/configs/tiny.yaml",
                   "--run-name", "local-beside", f"data.root={data}", "train.epochs=1",
                   f"ray.storage_path={tmp_path / 'runs'}", f"mlflow.experiment={EXPERIMENT}-local"))  # fmt: skip
    assert "job submit" not in out and re.search(r"epoch 1/1 .*val t2v R@1", out), out[-3000:]
    assert "Found multiple active Ray instances" not in out, out[-6000:]
    assert "Connecting to existing Ray cluster" not in out  # a private cluster, not the shared head
