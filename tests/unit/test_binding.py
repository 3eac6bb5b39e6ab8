"""etva.eval.binding: group R@1 and pairwise binding accuracy against a naive reference and hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from etva.eval.binding import KINDS, GroupTable, binding_kind, group_counts, metrics_from_group_counts


def naive(
    sim: np.ndarray, qv: np.ndarray, group: np.ndarray, kind: np.ndarray, ties: str
) -> dict[str, float]:
    """Loops over captions and group members, straight from the definitions."""
    tie = {"average": 0.5, "optimistic": 1.0, "pessimistic": 0.0}[ties]
    hits, chance, pairs = [], [], {k: [] for k in KINDS}
    for i, v in enumerate(qv):
        if group[v] < 0:
            continue
        members = [u for u in range(len(group)) if group[u] == group[v] and u != v]
        if not members:
            continue
        above = sum(sim[i, u] > sim[i, v] for u in members)
        equal = sum(sim[i, u] == sim[i, v] for u in members)
        if ties == "average":  # P(first) under a random order of the tied block
            hits.append(0.0 if above else 1.0 / (equal + 1))
        else:
            hits.append(float(above == 0 and (equal == 0 or ties == "optimistic")))
        chance.append(1.0 / (len(members) + 1))
        if kind[v] == "":
            for u in members:
                s, t = sim[i, v], sim[i, u]
                pairs[kind[u]].append(1.0 if s > t else tie if s == t else 0.0)
    out = {"group_R1": 100 * np.mean(hits), "group_R1_chance": 100 * np.mean(chance)}
    every = [x for k in KINDS for x in pairs[k]]
    out["pair_acc"] = 100 * np.mean(every)
    out.update({f"pair_acc_{k}": 100 * np.mean(p) for k, p in pairs.items() if p})
    return out


def random_case(seed: int, num_groups: int = 12, captions: int = 3, levels: int = 3):
    """Groups of 1-4 videos (target first, distractor kinds at random), a few videos in no group, and
    integer scores with many ties."""
    rng = np.random.default_rng(seed)
    group, kind = [], []
    for g in range(num_groups):
        size = int(rng.integers(1, 5))
        group += [g] * size
        kind += ["", *rng.choice(KINDS, size - 1).tolist()]
    group += [-1, -1]
    kind += ["", ""]
    v = len(group)
    qv = np.repeat(np.arange(v), captions)
    sim = rng.integers(0, levels, size=(qv.size, v)).astype(np.float32)
    return sim, qv, GroupTable(np.array(group), np.array(kind))


@pytest.mark.parametrize("ties", ["average", "optimistic", "pessimistic"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_the_naive_reference_in_chunks_and_on_torch(seed, ties):
    sim, qv, table = random_case(seed)
    want = naive(sim, qv, table.group, table.kind, ties)
    for chunk in (None, 1, 7):
        got = binding_metrics(sim, qv, table, ties=ties, query_chunk=chunk)
        assert got.keys() == want.keys()
        for k in want:
            assert got[k] == pytest.approx(want[k]), (k, chunk)
    assert binding_metrics(torch.from_numpy(sim), torch.from_numpy(qv), table, ties=ties) == pytest.approx(
        want
    )


def test_hand_made_group():
    # one group: target 0 and distractors 1 (colour), 2 (order), 3 (sound moment); video 4 alone
    table = GroupTable(np.array([0, 0, 0, 0, -1]), np.array(["", "colour", "order", "sound_moment", ""]))
    sim = np.array(
        [
            [0.9, 0.1, 0.9, 0.95, 0.0],  # target caption: beats colour, ties order, loses to sound
            [0.2, 0.8, 0.1, 0.1, 0.9],  # colour distractor's caption: first in its group (video 4 is outside)
            [0.5, 0.5, 0.5, 0.5, 0.5],  # order distractor's caption: a 4-way tie, 1/4
            [0.0, 0.0, 0.0, 0.0, 0.0],  # its own video is 3: another 4-way tie
            [0.0, 0.0, 0.0, 0.0, 1.0],  # video 4's caption: no group, not counted
        ],
        np.float32,
    )
    got = binding_metrics(sim, np.array([0, 1, 2, 3, 4]), table)
    assert got["group_R1"] == pytest.approx(100 * (0 + 1 + 0.25 + 0.25) / 4)
    assert got["group_R1_chance"] == pytest.approx(25.0)
    assert (
        got["pair_acc_colour"] == 100.0
        and got["pair_acc_order"] == 50.0
        and got["pair_acc_sound_moment"] == 0.0
    )
    assert got["pair_acc"] == pytest.approx(50.0) and "pair_acc_motion" not in got
    counts = group_counts(sim, np.array([0, 1, 2, 3, 4]), table)
    assert counts.size.tolist() == [4, 4, 4, 4, 0] and counts.h.tolist()[:2] == [1, 0]


def test_a_constant_matrix_scores_chance():
    sim, qv, table = random_case(5, levels=1)
    got = binding_metrics(sim, qv, table)
    assert got["group_R1"] == pytest.approx(got["group_R1_chance"])
    assert all(got[k] == 50.0 for k in got if k.startswith("pair_acc"))


def test_kinds_bad_tables_and_inputs():
    changed = ("", "event0.colour_swap", "event1.motion_swap", "order", "sound_moment")
    assert [binding_kind(c) for c in changed] == ["", "colour", "motion", "order", "sound_moment"]
    with pytest.raises(ValueError, match="changed binding 'event0.size_swap'"):
        binding_kind("event0.size_swap")
    with pytest.raises(ValueError, match="unknown kinds"):
        GroupTable(np.array([0]), np.array(["size"]))
    table = GroupTable(np.array([0, 0, 1]), np.array(["", "order", ""]))
    assert table.take(np.array([2, 0])).group.tolist() == [1, 0]
    with pytest.raises(ValueError, match="outside the table's 3 videos"):
        table.take([3])
    with pytest.raises(ValueError, match="2 rows for 3 scored videos"):
        binding_metrics(np.zeros((3, 3)), np.arange(3), table.take([0, 1]))
    with pytest.raises(ValueError, match="query_to_video"):
        binding_metrics(np.zeros((3, 3)), np.array([0, 1, 3]), table)


def binding_metrics(sim, query_to_video, groups, ties="average", query_chunk=None) -> dict:
    """What evaluation computes (etva.eval.scoring): the within-group counts, then the metrics."""
    return metrics_from_group_counts(group_counts(sim, query_to_video, groups, query_chunk), ties)
