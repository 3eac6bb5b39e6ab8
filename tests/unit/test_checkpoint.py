"""Checkpoints: atomic write, checksum verification, no arbitrary unpickling."""

import json
import pickle

import pytest
import torch

from etva.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def _state():
    torch.manual_seed(0)
    m = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    m(torch.randn(2, 4)).sum().backward()
    opt.step()
    return m, opt


def test_roundtrip(tmp_path):
    m, opt = _state()
    out = save_checkpoint(
        tmp_path / "ckpt",
        m.state_dict(),
        {"epoch": 3, "metrics": {"val/t2v_R1": 12.5}},
        optimizer_state=opt.state_dict(),
        config_yaml="train:\n  epochs: 3\n",
        tokenizer_files={"spiece.model": b"\x00abc"},
    )
    ck = load_checkpoint(out)
    assert ck["meta"]["epoch"] == 3
    for k, v in m.state_dict().items():
        torch.testing.assert_close(ck["model"][k], v)
    opt2 = torch.optim.AdamW(m.parameters(), lr=1e-3)
    opt2.load_state_dict(ck["optimizer"])
    assert (ck["tokenizer_dir"] / "spiece.model").read_bytes() == b"\x00abc"
    assert "epochs: 3" in ck["config_yaml"]


def test_tampered_weights_are_refused(tmp_path):
    m, _ = _state()
    out = save_checkpoint(tmp_path / "ckpt", m.state_dict(), {"epoch": 0})
    sd = torch.load(out / "model.pt", weights_only=True)
    sd["weight"] += 1
    torch.save(sd, out / "model.pt")
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(out)


class _Evil:
    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_pickled_objects_are_refused_even_with_valid_manifest(tmp_path):
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "model.pt").write_bytes(pickle.dumps({"weight": _Evil()}))
    (out / "meta.json").write_text("{}")
    import hashlib

    manifest = {n: hashlib.sha256((out / n).read_bytes()).hexdigest() for n in ("model.pt", "meta.json")}
    (out / "MANIFEST.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(out)


def test_incomplete_checkpoint_is_refused(tmp_path):
    m, _ = _state()
    out = save_checkpoint(tmp_path / "ckpt", m.state_dict(), {"epoch": 0})
    (out / "MANIFEST.json").unlink()
    with pytest.raises(CheckpointError, match="incomplete"):
        load_checkpoint(out)


def test_crash_mid_write_leaves_nothing(tmp_path, monkeypatch):
    m, opt = _state()
    real_save = torch.save
    calls = []

    def failing_save(obj, f, *a, **k):
        calls.append(f)
        if len(calls) == 2:  # model.pt written, optimizer.pt fails
            raise OSError("disk full")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "ckpt", m.state_dict(), {}, optimizer_state=opt.state_dict())
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "x").write_text("keep me")
    with pytest.raises(CheckpointError, match="non-empty"):
        save_checkpoint(tmp_path / "ckpt", {}, {})
    assert (tmp_path / "ckpt" / "x").read_text() == "keep me"


def test_full_disk_fails_clearly_and_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    from etva.train.checkpoint import FULL_DISK_FAULT_AT_ENV, FULL_DISK_FAULT_ENV

    m, opt = _state()
    marker = tmp_path / "fired"
    monkeypatch.setenv(FULL_DISK_FAULT_ENV, str(marker))  # the first file of epoch_0001 goes to /dev/full
    monkeypatch.setenv(FULL_DISK_FAULT_AT_ENV, "epoch_0001")
    prev = save_checkpoint(tmp_path / "epoch_0000", m.state_dict(), {"epoch": 0}, optimizer_state=opt.state_dict())
    assert not marker.exists(), "the fault fired on a path it was not aimed at"
    with pytest.raises(CheckpointError, match="no space left on the device.*earlier checkpoints are intact"):
        save_checkpoint(tmp_path / "epoch_0001", m.state_dict(), {"epoch": 1}, optimizer_state=opt.state_dict())
    assert marker.exists(), "the fault was not injected"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_0000", "fired"]  # no half-written folder
    assert load_checkpoint(prev)["meta"]["epoch"] == 0  # the previous one still verifies and loads
    save_checkpoint(tmp_path / "epoch_0001", m.state_dict(), {"epoch": 1}, optimizer_state=opt.state_dict())
    assert load_checkpoint(tmp_path / "epoch_0001")["meta"]["epoch"] == 1  # space back: writing works


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete_manifest"])
def test_damaged_checkpoint_is_refused(tmp_path, damage):
    m, _ = _state()
    out = save_checkpoint(tmp_path / "ckpt", m.state_dict(), {"epoch": 0})
    weights = out / "model.pt"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "flip":
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
    else:
        (out / "MANIFEST.json").unlink()
    with pytest.raises(CheckpointError, match="checksum mismatch|incomplete"):
        load_checkpoint(out)


def test_retained_keeps_the_best_and_the_most_recent():
    from etva.train.checkpoint import retained

    def r(i, r1, mdr=5.0):
        return (f"epoch_{i}", {"val/t2v_R1": r1, "val/t2v_MdR": mdr})

    reports = [r(0, 10.0), r(1, 30.0), r(2, 20.0), r(3, 25.0), r(4, 5.0)]
    assert retained(reports, 2) == {"epoch_1", "epoch_3", "epoch_4"}
    assert retained(reports, 0) == {"epoch_1"}
    assert retained(reports[:2], 2) == {"epoch_0", "epoch_1"}
    assert retained([r(0, 30.0, 3.0), r(1, 30.0, 2.0), r(2, 1.0), r(3, 1.0)], 1) == {"epoch_1", "epoch_3"}
    assert retained([r(0, 30.0), r(1, 30.0), r(2, 1.0)], 1) == {"epoch_0", "epoch_2"}  # earliest of equals
    assert retained([], 2) == set()
