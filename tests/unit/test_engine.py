"""Engine: it learns (synthetic clips, plain process), evaluate dedupes/orders, optimizer, scheduler."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from etva.config import ExpertConfig, LossConfig, ModelConfig, OptimConfig, TextConfig
from etva.eval.metrics import retrieval_metrics
from etva.model import build_model
from etva.train.engine import (
    build_optimizer,
    build_scheduler,
    evaluate,
    move_batch,
    train_epoch,
)
from etva.train.losses import build_loss

torch.set_num_threads(2)

COLOURS = {"red": (230, 30, 30), "green": (30, 200, 30), "blue": (40, 60, 230), "yellow": (230, 220, 40)}
MOVES = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
SOUNDS = ("silent", "low", "high")
WORDS = ["<pad>", "a", "square", "moves", "with", "tone", "no", "sound", *COLOURS, *MOVES, *SOUNDS]
WORD_ID = {w: i for i, w in enumerate(WORDS)}
SIZE, T, A, M, L = 32, 4, 16, 8, 10


def make_clip(colour: str, move: str, sound: str, rng: np.random.Generator):
    """One clip: a coloured 8x8 square moving across a dark noisy background, plus a log-mel tone."""
    frames = rng.integers(0, 40, (T, SIZE, SIZE, 3)).astype(np.uint8)
    dy, dx = MOVES[move]
    y0, x0 = rng.integers(8, 16, 2)
    for t in range(T):
        y, x = y0 + 4 * dy * t, x0 + 4 * dx * t
        frames[t, y : y + 8, x : x + 8] = COLOURS[colour]
    mel = rng.normal(0, 0.1, (A, M)).astype(np.float32)
    mask = np.full(A, sound != "silent")
    if sound != "silent":
        mel[:, 1 if sound == "low" else 6] += 3.0
    return frames, mel, mask


def make_caption(colour: str, move: str, sound: str, rng: np.random.Generator) -> np.ndarray:
    tail = ["with", "no", "sound"] if sound == "silent" else ["with", "a", sound, "tone"]
    words = (
        ["a", colour, "square", "moves", move]
        if rng.random() < 0.5
        else ["a", "square", "moves", move, colour]
    )
    ids = np.zeros(L, np.int64)
    toks = [WORD_ID[w] for w in words + tail][:L]
    ids[: len(toks)] = toks
    return ids


def make_split(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        c, m, s = rng.choice(list(COLOURS)), rng.choice(list(MOVES)), rng.choice(SOUNDS)
        frames, mel, mask = make_clip(c, m, s, rng)
        rows.append((frames, mel, mask, make_caption(c, m, s, rng)))
    ids = np.stack([r[3] for r in rows])
    return {
        "frames": np.stack([r[0] for r in rows]),
        "audio_mel": np.stack([r[1] for r in rows]),
        "audio_mask": np.stack([r[2] for r in rows]),
        "input_ids": ids,
        "attention_mask": (ids != 0).astype(np.int64),
        "video_index": np.arange(n),
        "caption_index": np.arange(n),
    }


def batches(split: dict, bs: int, rng: np.random.Generator | None = None, keys=None):
    n = len(split["video_index"])
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for s in range(0, n - (n % bs if rng is not None else 0), bs):
        sel = order[s : s + bs]
        yield {k: v[sel] for k, v in split.items() if keys is None or k in keys}


VIDEO_KEYS = {"frames", "audio_mel", "audio_mask", "video_index"}
CAPTION_KEYS = {"input_ids", "attention_mask", "caption_index", "video_index"}


def tiny_cfg(**kw) -> ModelConfig:
    text = TextConfig(
        hidden_size=64, embedding_size=32, num_layers=1, num_heads=2, intermediate_size=128, max_position=16
    )
    experts = {k: ExpertConfig(kind=k, width=32) for k in ("appearance", "motion", "audio")}
    cfg = ModelConfig(d=64, text=text, experts=experts, fusion_heads=2, num_clusters=8, dropout=0.0)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def _setup(seed: int = 0, **kw):
    torch.manual_seed(seed)
    model = build_model(tiny_cfg(**kw), len(WORDS))
    loss_fn = build_loss(LossConfig(temperature=0.1))
    optim_cfg = OptimConfig(lr=2e-3, warmup_steps=5)
    optimizer = build_optimizer(torch.nn.ModuleList([model, loss_fn]), optim_cfg)
    return model, loss_fn, optimizer, optim_cfg


def _eval(model, split):
    return evaluate(model, batches(split, 16, keys=VIDEO_KEYS), batches(split, 16, keys=CAPTION_KEYS), "cpu")


def test_training_raises_t2v_r1_to_3x_chance():
    train, test = make_split(96, seed=1), make_split(32, seed=2)
    model, loss_fn, optimizer, optim_cfg = _setup()
    epochs, bs = 8, 16
    scheduler = build_scheduler(optimizer, optim_cfg, total_steps=epochs * (96 // bs))
    before = _eval(model, test)
    reports: list[dict] = []
    first = last = None
    for epoch in range(epochs):
        rng = np.random.default_rng(epoch)
        stats = train_epoch(
            model,
            loss_fn,
            optimizer,
            scheduler,
            batches(train, bs, rng),
            "cpu",
            epoch=epoch,
            log_every=3,
            report=reports.append,
        )
        first = first if first is not None else stats["loss"]
        last = stats["loss"]
    after = _eval(model, test)
    chance = 100.0 / 32
    print(f"t2v_R1 before {before['t2v_R1']:.1f} after {after['t2v_R1']:.1f} (chance {chance:.1f})")
    assert after["t2v_R1"] >= 3 * chance, after
    assert after["t2v_R1"] > before["t2v_R1"]
    assert after["v2t_R1"] >= 3 * chance, after
    assert last < 0.7 * first
    assert len(reports) == epochs * 2 and {"loss", "step", "epoch", "lr"} <= set(reports[0])
    assert {"global", "local", "fused", "temperature"} <= set(stats)
    assert stats["steps"] == 6 and stats["clips"] == 96


def test_train_epoch_is_deterministic_and_measures_data_wait():
    split = make_split(16, seed=3)

    def slow(it):
        for b in it:
            time.sleep(0.05)
            yield b

    out = []
    for _ in range(2):
        model, loss_fn, optimizer, _ = _setup(seed=5)
        out.append(train_epoch(model, loss_fn, optimizer, None, slow(batches(split, 8)), "cpu", epoch=0))
    assert out[0]["loss"] == out[1]["loss"]
    assert out[0]["data_wait_s"] >= 0.09
    assert 0.0 < out[0]["data_stall_share"] < 1.0
    assert out[0]["clips_per_s"] > 0


def test_evaluate_dedupes_and_orders_and_matches_full_matrix():
    split = make_split(12, seed=4)
    model, *_ = _setup(seed=6)
    model.eval()
    ref_batch = move_batch(split, "cpu")
    with torch.no_grad():
        t, v = model(ref_batch)
        sim = model.similarity(t, v)["fused"]
    expected = retrieval_metrics(sim, np.arange(12))
    # shuffled order, one video repeated (padded sampler), captions in two uneven batches
    perm = np.random.default_rng(0).permutation(12)
    vids = [
        {k: split[k][perm[:7]] for k in VIDEO_KEYS},
        {k: split[k][np.r_[perm[7:], perm[0]]] for k in VIDEO_KEYS},
    ]
    caps = [{k: split[k][perm[:3]] for k in CAPTION_KEYS}, {k: split[k][perm[3:]] for k in CAPTION_KEYS}]
    got = evaluate(model, vids, caps, "cpu", query_chunk=5, video_chunk=4)
    assert got["num_videos"] == 12 and got["num_queries"] == 12
    for k, v in expected.items():
        assert got[k] == pytest.approx(v), k
    # local-only model scores with its own "fused" (= local) similarity
    local, *_ = _setup(seed=6, alignment="local")
    assert _eval(local, split)["num_queries"] == 12


def test_move_batch_converts_numpy():
    b = move_batch({"a": np.zeros((2, 3), np.uint8), "m": np.ones(2, bool), "s": ["x"]}, "cpu")
    assert isinstance(b["a"], torch.Tensor) and b["a"].dtype == torch.uint8
    assert b["m"].dtype == torch.bool and b["s"] == ["x"]


def test_optimizer_groups_text_lr_and_no_decay():
    torch.manual_seed(0)
    model = build_model(tiny_cfg(), len(WORDS))
    cfg = OptimConfig(lr=1e-3, weight_decay=0.1, text_lr_scale=0.1)
    opt = build_optimizer(torch.nn.ModuleList([model, build_loss(LossConfig())]), cfg)
    by_name = {g["name"]: g for g in opt.param_groups}
    assert set(by_name) == {"text_decay", "text_no_decay", "other_decay", "other_no_decay"}
    assert by_name["text_decay"]["lr"] == pytest.approx(1e-4)
    assert by_name["other_decay"]["lr"] == pytest.approx(1e-3)
    assert by_name["other_no_decay"]["weight_decay"] == 0.0
    text_ids = {id(p) for p in model.text.parameters()}
    assert all(id(p) in text_ids for p in by_name["text_decay"]["params"])
    n_opt = sum(len(g["params"]) for g in opt.param_groups)
    assert n_opt == len({id(p) for p in model.parameters()}) + 1  # + temperature


def test_scheduler_warmup_then_cosine():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, OptimConfig(lr=1.0, warmup_steps=4), total_steps=14)
    lrs = []
    for _ in range(14):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[9] == pytest.approx(0.5)  # halfway through the 10 cosine steps
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))


def test_evaluate_per_query_counts_and_reweighted_row():
    from etva.eval.metrics import count_ranks
    from etva.eval.reweight import reweighted_metrics

    split = make_split(12, seed=4)
    model, *_ = _setup(seed=6)
    model.eval()
    with torch.no_grad():
        t, v = model(move_batch(split, "cpu"))
        sim = model.similarity(t, v)["fused"].numpy()
    perm = np.random.default_rng(1).permutation(12)  # captions arrive shuffled: counts come back in index order
    caps = [{k: split[k][perm] for k in CAPTION_KEYS}]
    per_query: dict = {}
    got = evaluate(model, batches(split, 5, keys=VIDEO_KEYS), caps, "cpu", reweight="dsl", reweight_scale=10.0,
                   per_query=per_query)  # fmt: skip
    counts = count_ranks(sim, np.arange(12))
    assert per_query["caption_index"].tolist() == list(range(12)) == per_query["video_index"].tolist()
    np.testing.assert_array_equal(per_query["t2v_h"], counts.t2v_h)
    np.testing.assert_array_equal(per_query["t2v_e"], counts.t2v_e)
    want = reweighted_metrics(sim, np.arange(12), "dsl", 10.0)
    assert got["reweighted/t2v_R1"] == pytest.approx(want["t2v_R1"], abs=1e-4)
    assert "reweighted/t2v_R1" not in evaluate(model, batches(split, 5, keys=VIDEO_KEYS), caps, "cpu")
