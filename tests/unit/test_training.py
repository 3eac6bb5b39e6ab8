"""build_training (device-correct resume, checkpoint round trip), mixed precision, step-level reports."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from etva.config import Config, LossConfig, OptimConfig, TrainConfig
from etva.train.checkpoint import load_checkpoint, save_checkpoint
from etva.train.engine import build_scheduler, evaluate, train_epoch, train_step
from etva.train.precision import autocast, make_grad_scaler
from etva.train.state import TrainingState, build_training
from tests.unit.test_engine import CAPTION_KEYS, VIDEO_KEYS, WORDS, _setup, batches, make_split, tiny_cfg

torch.set_num_threads(2)


def _cfg(precision: str = "fp32") -> Config:
    return Config(
        model=tiny_cfg(),
        loss=LossConfig(temperature=0.1),
        optim=OptimConfig(lr=2e-3, warmup_steps=2),
        train=TrainConfig(seed=3, precision=precision),
    )


def _epoch(ts: TrainingState, split: dict, epoch: int, **kw) -> dict:
    return train_epoch(
        ts.model, ts.loss_fn, ts.optimizer, ts.scheduler, batches(split, 8), ts.device,
        epoch=epoch, precision=ts.precision, scaler=ts.scaler, **kw,
    )  # fmt: skip


def _save(ts: TrainingState, path, epoch: int) -> None:
    meta = {"epoch": epoch, "history": {str(epoch): {"val/t2v_R1": 1.0}}}
    save_checkpoint(path, ts.model_state(), meta, optimizer_state=ts.optimizer_state())


def test_resume_puts_optimizer_state_on_each_parameters_device(tmp_path):
    """Resume onto the ``meta`` device: the state must follow the parameters, not stay on the CPU."""
    split = make_split(16, seed=3)
    ts = build_training(_cfg(), len(WORDS), total_steps=10, device="cpu")
    _epoch(ts, split, 0)
    _save(ts, tmp_path / "ckpt", 0)
    resumed = build_training(_cfg(), len(WORDS), 10, "meta", state=load_checkpoint(tmp_path / "ckpt"))
    assert resumed.start_epoch == 1 and resumed.history == {"0": {"val/t2v_R1": 1.0}}
    assert resumed.scheduler.last_epoch == 2
    checked = 0
    for group in resumed.optimizer.param_groups:
        for p in group["params"]:
            assert p.device.type == "meta"
            for key, value in resumed.optimizer.state[p].items():
                # torch keeps Adam's scalar ``step`` on the CPU by design (unless capturable/fused)
                if torch.is_tensor(value) and key != "step":
                    assert value.device == p.device, key
                    checked += 1
    assert checked == 2 * sum(len(g["params"]) for g in resumed.optimizer.param_groups)  # exp_avg(_sq)


def test_resumed_run_continues_exactly_like_an_uninterrupted_one(tmp_path):
    split = make_split(16, seed=3)
    ts = build_training(_cfg(), len(WORDS), total_steps=10, device="cpu")
    _epoch(ts, split, 0)
    _save(ts, tmp_path / "ckpt", 0)
    cont = _epoch(ts, split, 1)
    resumed = build_training(_cfg(), len(WORDS), 10, "cpu", state=load_checkpoint(tmp_path / "ckpt"))
    again = _epoch(resumed, split, resumed.start_epoch)
    assert again["loss"] == cont["loss"] and again["lr"] == cont["lr"]
    assert again["step"] == cont["step"] == 4
    for (name, a), b in zip(ts.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_resume_without_optimizer_state_is_refused(tmp_path):
    ts = build_training(_cfg(), len(WORDS), total_steps=10, device="cpu")
    _save(ts, tmp_path / "ckpt", 0)
    with pytest.raises(ValueError, match="no optimizer/scheduler state"):
        build_training(
            _cfg(), len(WORDS), 10, "cpu", state=load_checkpoint(tmp_path / "ckpt", load_optimizer=False)
        )


def test_bf16_step_runs_with_finite_loss_and_fp32_parameters():
    split = make_split(8, seed=4)
    ts = build_training(_cfg("bf16"), len(WORDS), total_steps=4, device="cpu")
    assert ts.scaler is None
    batch = {k: torch.from_numpy(v) for k, v in split.items()}
    with autocast("cpu", "bf16"):  # the encoders really run in bf16 under this context
        assert ts.model.text(batch["input_ids"], batch["attention_mask"]).pooled.dtype == torch.bfloat16
    total, parts = train_step(ts.model, ts.loss_fn, batch, "bf16")
    assert total.dtype == torch.float32 and torch.isfinite(total)
    before = [p.detach().clone() for p in ts.model.parameters()]
    stats = _epoch(ts, split, 0)
    assert np.isfinite(stats["loss"])
    assert all(p.dtype == torch.float32 for p in ts.model.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(before, ts.model.parameters(), strict=True))


def test_fp16_needs_a_scaler_and_saves_its_state(tmp_path):
    split = make_split(8, seed=4)
    ts = build_training(_cfg("fp16"), len(WORDS), total_steps=4, device="cpu")
    assert isinstance(ts.scaler, torch.amp.GradScaler)
    with pytest.raises(ValueError, match="GradScaler"):
        train_epoch(
            ts.model, ts.loss_fn, ts.optimizer, None, batches(split, 8), "cpu", epoch=0, precision="fp16"
        )
    assert np.isfinite(_epoch(ts, split, 0)["loss"])
    ts.scaler.update(1234.0)  # a recognisable scale
    _save(ts, tmp_path / "ckpt", 0)
    resumed = build_training(_cfg("fp16"), len(WORDS), 4, "cpu", state=load_checkpoint(tmp_path / "ckpt"))
    assert resumed.scaler.get_scale() == 1234.0
    assert make_grad_scaler("cpu", "bf16") is None


def test_report_carries_step_level_signal():
    split = make_split(32, seed=5)
    model, loss_fn, optimizer, optim_cfg = _setup()
    scheduler = build_scheduler(optimizer, optim_cfg, total_steps=8)
    reports: list[dict] = []
    for epoch in range(2):
        train_epoch(
            model, loss_fn, optimizer, scheduler, batches(split, 8), "cpu",
            epoch=epoch, log_every=2, report=reports.append,
        )  # fmt: skip
    assert [r["step"] for r in reports] == [2, 4, 6, 8]  # global steps, carried over epochs
    assert [r["epoch_step"] for r in reports] == [2, 4, 2, 4]
    for r in reports:
        assert {"loss", "lr", "temperature", "data_stall_share", "epoch"} <= set(r)
        assert 0.0 <= r["data_stall_share"] <= 1.0 and np.isfinite(r["loss"])
    assert reports[-1]["temperature"] == pytest.approx(float(loss_fn.temperature.detach()))
    assert reports[0]["lr"] != reports[-1]["lr"]  # the current lr, not the initial one


def _learn(precision: str, epochs: int = 8, bs: int = 16) -> dict[str, float]:
    """The fixed-seed learnability setup of test_engine (96 train clips, 32 test clips)."""
    train, test = make_split(96, seed=1), make_split(32, seed=2)
    model, loss_fn, optimizer, optim_cfg = _setup()
    scheduler = build_scheduler(optimizer, optim_cfg, total_steps=epochs * (96 // bs))
    for epoch in range(epochs):
        rng = np.random.default_rng(epoch)
        train_epoch(
            model, loss_fn, optimizer, scheduler, batches(train, bs, rng), "cpu",
            epoch=epoch, precision=precision,
        )  # fmt: skip
    vids, caps = batches(test, 16, keys=VIDEO_KEYS), batches(test, 16, keys=CAPTION_KEYS)
    return evaluate(model, vids, caps, "cpu", precision=precision)


@pytest.mark.timeout(300)
def test_bf16_metrics_within_tolerance_of_fp32():
    """Tolerance: R@1 within 2 of the 32 queries (6.25 points) per direction; R@5 within 1 query."""
    fp32, bf16 = _learn("fp32"), _learn("bf16")
    print(f"fp32 {fp32}\nbf16 {bf16}")
    chance = 100.0 / 32
    assert bf16["t2v_R1"] >= 3 * chance and bf16["v2t_R1"] >= 3 * chance
    for key in ("t2v_R1", "v2t_R1"):
        assert abs(bf16[key] - fp32[key]) <= 6.25 + 1e-9, key
    for key in ("t2v_R5", "v2t_R5"):
        assert abs(bf16[key] - fp32[key]) <= 3.125 + 1e-9, key
