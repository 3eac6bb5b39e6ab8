"""benchmarks.gpu_check: imports nothing the GPU machine lacks; resume puts every tensor on the device.
Its quick CPU mode (every check in one table) runs in tests/unit/test_run_all.py, through run_all."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def _run(code_or_args: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, *code_or_args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_import_pulls_no_ray_mlflow_or_pyav():
    code = "import sys, benchmarks.gpu_check; print([m for m in ('av', 'ray', 'mlflow') if m in sys.modules])"
    out = _run(["-c", code])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_resume_puts_every_state_tensor_on_the_parameters_device():
    from benchmarks import gpu_check

    s = gpu_check.QUICK
    r = gpu_check.bench_resume(s, torch.device("cpu"))
    model, _, _ = gpu_check.build(s, torch.device("cpu"))
    trainable = sum(1 for p in model.parameters() if p.requires_grad)
    assert r["checked"] >= 2 * trainable  # exp_avg and exp_avg_sq of every model parameter
    assert isinstance(r["loss"], float)


def test_misplaced_optimizer_state_is_detected():
    from benchmarks import gpu_check

    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([p])
    p.grad = torch.ones(3)
    opt.step()
    assert gpu_check._state_devices(opt) == (2, [])
    opt.state[p]["exp_avg"] = opt.state[p]["exp_avg"].to("meta")
    checked, bad = gpu_check._state_devices(opt)
    assert checked == 2 and len(bad) == 1 and bad[0].startswith("exp_avg: meta")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_smoke():
    out = _run(["-m", "benchmarks.gpu_check", "--device", "cuda", "--quick"])
    assert out.returncode == 0, out.stderr[-3000:]
