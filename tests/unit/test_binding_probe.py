"""benchmarks/binding_probe.py: its three measures on embeddings with a known answer, and the script end
to end on a generated compositional benchmark and an untrained tiny checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from benchmarks import binding_probe as bp
from benchmarks import text_binding as tb
from etva.config import config_to_dict, load_config
from etva.data.synth import generate_dataset
from etva.eval.binding import GroupTable
from etva.model import build_model
from etva.train.checkpoint import save_checkpoint
from ray_jobs.prepare import prepare_splits, tokenizer_files

REPO = Path(__file__).resolve().parents[2]
# 3 groups: the colour distractor is the target itself (blind), the order one far from it
GROUPS = [{"": 3 * g, "colour": 3 * g + 1, "order": 3 * g + 2} for g in range(3)]


def test_video_separation_is_zero_for_a_copy_and_large_for_a_change():
    torch.manual_seed(0)
    targets = torch.randn(3, 8)
    rows = []
    for t in targets:
        rows += [t, t.clone(), t + 5.0]
    sep = bp._video_sep(torch.stack(rows), GROUPS)
    assert sep["colour"] == 0.0 and sep["order"] > 1.0
    assert set(sep) == {"colour", "order"}


def test_text_accuracy_is_chance_when_the_captions_are_the_same_and_100_when_apart():
    torch.manual_seed(0)
    emb, caps = [], {}
    for g in GROUPS:
        base = torch.randn(8)
        for kind, video in g.items():
            shift = 10.0 if kind == "order" else 0.0  # the colour distractor's captions equal the target's
            caps[video] = list(range(len(emb), len(emb) + 3))
            emb += [base + shift + 0.01 * k for k in range(3)]
    acc = bp._text_acc(torch.stack(emb), caps, GROUPS)
    assert acc["order"] == 100.0
    assert acc["colour"] == pytest.approx(50.0, abs=20.0)  # paraphrase noise only: neither side nearer


def test_pair_accuracy_counts_a_tie_as_half():
    caps = {3 * g: [g] for g in range(3)}
    sim = torch.zeros(3, 9)
    for g in range(3):
        sim[g, 3 * g] = 1.0  # the target above its order distractor, tied with its colour distractor
        sim[g, 3 * g + 1] = 1.0
    acc = bp._pair_acc(sim, caps, GROUPS)
    assert acc == {"colour": 50.0, "order": 100.0}


@pytest.fixture(scope="module")
def compositional_checkpoint(tmp_path_factory) -> tuple[Path, Path]:
    """(an untrained tiny checkpoint, its generated compositional benchmark of 24 videos)."""
    tmp = tmp_path_factory.mktemp("binding")
    root = tmp / "comp"
    overrides = [
        f"data.root={root}",
        "data.synth.mode=compositional",
        "data.synth.fps=4",
        "data.synth.duration_s=2.0",
    ]
    cfg = load_config(REPO / "ray_jobs/configs/tiny.yaml", overrides)
    generate_dataset(root, 24, 0, cfg=cfg.data.synth, workers=1, progress=False)
    tok, _ = prepare_splits(cfg, tmp / "tok", {"train": "train"})
    torch.manual_seed(0)
    ckpt = tmp / "ckpt"
    save_checkpoint(
        ckpt,
        {"model": build_model(cfg.model, len(tok)).state_dict()},
        {"epoch": 0, "vocab_size": len(tok)},
        config_yaml=yaml.safe_dump(config_to_dict(cfg), sort_keys=False),
        tokenizer_files=tokenizer_files(tmp / "tok"),
    )
    return ckpt, root


def test_the_script_on_a_compositional_benchmark(compositional_checkpoint, capsys):
    ckpt, root = compositional_checkpoint
    assert bp.main(["--checkpoint", str(ckpt), "--root", str(root), "--groups", "5"]) == 0
    assert torch.is_grad_enabled(), "the probe must not switch gradients off for the rest of the process"
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["branch", "measure", "colour", "motion", "order", "sound_moment"]
    rows = {tuple(line.split()[:3]): line.split()[3:] for line in lines[1:-2]}
    names = {(b, *m.split()) for b in ("global", "local") for m in ("video sep", "text acc", "pair acc")}
    assert names | {("fused", "pair", "acc")} == set(rows)
    assert "a scorer that binds order, sound_moment perfectly" in lines[-2]
    assert "a scorer that binds order, sound_moment, colour perfectly" in lines[-1]
    values = [float(v) for row in rows.values() for v in row if v != "nan"]
    assert values and all(0.0 <= v <= 100.0 for v in values)


def test_ceiling_of_order_and_sound_alone_is_half_of_the_groups_first():
    """One group of each composition (1, 2 or 3 colour/motion distractors): captions of an order or sound
    distractor always win; the others share their first place by coin flips: 50 % in all."""
    kinds = [
        "",
        "colour",
        "order",
        "sound_moment",
        "",
        "colour",
        "motion",
        "order",
        "",
        "colour",
        "motion",
        "colour",
    ]
    groups = GroupTable(np.repeat(np.arange(3), 4), np.array(kinds))
    got = bp.ceiling(groups)
    assert got["group_R1"] == pytest.approx(100 * (0.5 + 0.5 + 1 + 1 + 3 * (1 / 3) + 1 + 4 * 0.25) / 12)
    assert got["group_R1"] == pytest.approx(50.0)
    assert got["pair_acc_order"] == 100.0 and got["pair_acc_sound_moment"] == 100.0
    assert got["pair_acc_colour"] == 50.0 and got["pair_acc_motion"] == 50.0
    assert bp.ceiling(groups, visible=("order", "sound_moment", "colour", "motion"))["group_R1"] == 100.0


def test_text_targets_and_margins_score_a_binding_right_wrong_or_at_chance():
    events = [
        [
            {"colour": "red", "shape": "square", "motion": "up"},
            {"colour": "blue", "shape": "circle", "motion": "left"},
        ],
        [
            {"colour": "green", "shape": "cross", "motion": "static"},
            {"colour": "yellow", "shape": "triangle", "motion": "down"},
        ],
    ]
    y = torch.tensor([tb.targets(events)])  # (1, 2 events, 2 objects, 5)
    assert y[0, 0, 0].tolist() == [1, 0, 2, 6 + 2, 6 + 0]  # square: red (other blue), up (other left)
    right = torch.zeros(1, 2, 4, 11)
    for e, objects in enumerate(events):
        for o in objects:  # the head knows which shape has which colour and motion
            right[0, e, tb.SHAPES.index(o["shape"]), tb._COLOURS.index(o["colour"])] = 1.0
            right[0, e, tb.SHAPES.index(o["shape"]), 6 + tb.MOTIONS.index(o["motion"])] = 1.0
    assert set(tb._accuracy(right.flatten(1), y).values()) == {100.0}
    swapped = [[{**events[0][0], "colour": "blue"}, {**events[0][1], "colour": "red"}], events[1]]
    got = tb._accuracy(right.flatten(1), torch.tensor([tb.targets(swapped)]))
    assert got == {
        "event0 colour": 0.0,
        "event0 motion": 100.0,
        "event1 colour": 100.0,
        "event1 motion": 100.0,
    }
    bag = right.sum(dim=2, keepdim=True).expand_as(right)  # every shape gets every colour of its event
    assert set(tb._accuracy(bag.flatten(1), y).values()) == {50.0}


def test_text_binding_script_runs_every_reading(compositional_checkpoint, capsys):
    ckpt, root = compositional_checkpoint
    assert tb.main(["--checkpoint", str(ckpt), "--root", str(root), "--steps", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["text", "encoder"]
    rows = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in lines[1:]}
    assert set(rows) == {"scratch", "trained", "bigram"}
    assert all(len(v) == 4 and all(0.0 <= x <= 100.0 for x in v) for v in rows.values())
