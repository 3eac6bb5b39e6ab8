"""The binding metric of the compositional benchmark: pure functions of a similarity matrix.

A compositional test split comes in groups: a target clip and distractors that each change ONE binding of
it (``etva.data.synth.compositional``: two objects exchange colours or motions, the events play in the
other order, the sound plays at the other moment) and keep every global statistic. Retrieval over the
whole split can be won by finding the right group; these metrics ask whether the model tells the members
of a group apart (text->video, one row per caption):

- ``group_R1``: the share (percent) of captions whose own video ranks first among the videos of its group
  (chance ``100 / group size``, reported as ``group_R1_chance``). Ties follow the project's policy
  (``etva.eval.metrics.rank_outcomes``): with ``ties="average"`` a caption whose video ties with ``e``
  group members and is beaten by none counts ``1 / (e + 1)``. Captions of a video alone in its group (a
  distractor-less remainder, or a group cut by skipped clips) are not counted.
- ``pair_acc_<kind>``: over the captions of a TARGET, the share (percent) of its distractors of that kind
  scored below the target (chance 50); a tie counts 0.5 (``average``), 1 (``optimistic``) or 0
  (``pessimistic``). ``pair_acc`` pools every kind. A kind with no pair in the split has no key.

Kinds: ``colour`` (``event{k}.colour_swap``), ``motion`` (``event{k}.motion_swap``), ``order``,
``sound_moment``. Memory: the caption rows are read in chunks of ``query_chunk``; the temporaries are
``(chunk, group size)``, never ``(queries, videos)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from etva.eval.metrics import TIE_POLICIES, rank_outcomes, sim_to_numpy, to_numpy

__all__ = [
    "KINDS",
    "BINDING_METRIC_NAMES",
    "binding_kind",
    "GroupTable",
    "GroupCounts",
    "group_counts",
    "metrics_from_group_counts",
]

KINDS = ("colour", "motion", "order", "sound_moment")
# every key metrics_from_group_counts can return (a kind without pairs in the split is left out)
BINDING_METRIC_NAMES: tuple[str, ...] = (
    "group_R1",
    "group_R1_chance",
    "pair_acc",
    *(f"pair_acc_{k}" for k in KINDS),
)
_TIE_CREDIT = {"average": 0.5, "optimistic": 1.0, "pessimistic": 0.0}


def binding_kind(changed: str) -> str:
    """The kind of a changed binding as the manifest writes it: ``event1.colour_swap`` -> ``colour``,
    ``order`` -> ``order``, ``""`` (a group's target) -> ``""``."""
    kind = changed.split(".")[-1].removesuffix("_swap")
    if kind not in ("", *KINDS):
        raise ValueError(
            f"changed binding {changed!r}: expected '' (target), one of {KINDS} or event<k>.<kind>_swap"
        )
    return kind


@dataclass(frozen=True)
class GroupTable:
    """Per video of a split (row = ``video_index``): its group id (``-1`` = in no group) and the kind of
    binding it changes with respect to its group's target (``""`` = the target itself)."""

    group: np.ndarray  # (V,) int64
    kind: np.ndarray  # (V,) str: "" or one of KINDS

    def __post_init__(self) -> None:
        group, kind = np.asarray(self.group), np.asarray(self.kind, dtype=str)
        if group.ndim != 1 or kind.shape != group.shape or group.dtype.kind not in "iu":
            raise ValueError(
                f"GroupTable: group (V,) integer and kind (V,) str, got {group.shape}/{kind.shape}"
            )
        bad = sorted(set(kind.tolist()) - {"", *KINDS})
        if bad:
            raise ValueError(f"GroupTable: unknown kinds {bad}, expected '' (target) or one of {KINDS}")
        object.__setattr__(self, "group", group.astype(np.int64))
        object.__setattr__(self, "kind", kind)

    def __len__(self) -> int:
        return int(self.group.shape[0])

    def take(self, video_index: Any) -> GroupTable:
        """The rows of these videos (e.g. the columns an evaluation scored, in column order)."""
        idx = np.asarray(to_numpy(video_index), dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise ValueError(
                f"GroupTable: video index {int(idx.max())} outside the table's {len(self)} videos"
            )
        return GroupTable(self.group[idx], self.kind[idx])


@dataclass(frozen=True)
class GroupCounts:
    """Per caption: its video's standing within its group, and its target-vs-distractor pairs."""

    h: np.ndarray  # (Q,) other members of the group scored strictly above the caption's video
    e: np.ndarray  # (Q,) other members scored equal to it
    size: np.ndarray  # (Q,) members of the group among the scored videos (0: in no group)
    wins: np.ndarray  # (len(KINDS),) distractors scored below their target (target captions)
    ties: np.ndarray  # (len(KINDS),) distractors scored equal to it
    pairs: np.ndarray  # (len(KINDS),) target-caption x distractor pairs of each kind


def _others(group: np.ndarray) -> np.ndarray:
    """(V, G - 1) columns of the OTHER members of every video's group (-1 pads; no group: all -1)."""
    members: dict[int, list[int]] = {}
    for j, g in enumerate(group.tolist()):
        if g >= 0:
            members.setdefault(g, []).append(j)
    width = max((len(m) for m in members.values()), default=1) - 1
    out = np.full((group.shape[0], max(width, 0)), -1, np.int64)
    for m in members.values():
        for j in m:
            rest = [o for o in m if o != j]
            out[j, : len(rest)] = rest
    return out


def _take(sim: Any, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``sim[rows, cols]`` (fancy indexing of a numpy array, memmap or torch tensor) as float numpy."""
    if hasattr(sim, "detach"):  # torch.Tensor: index on its own device
        import torch  # lazy: numpy callers never load torch

        r, c = (torch.as_tensor(a, device=sim.device) for a in (rows, cols))
        return sim_to_numpy(sim[r, c])
    return sim_to_numpy(np.asarray(sim[rows, cols]))


def _check(shape: tuple[int, ...], query_to_video: Any, groups: GroupTable, ties: str) -> np.ndarray:
    if len(shape) != 2 or shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"sim: expected a non-empty (num_queries, num_videos) matrix, got shape {shape}")
    if len(groups) != shape[1]:
        raise ValueError(
            f"groups: {len(groups)} rows for {shape[1]} scored videos (one row per column of sim)"
        )
    if ties not in TIE_POLICIES:
        raise ValueError(f"ties: unknown policy '{ties}', expected one of {TIE_POLICIES}")
    qv = np.asarray(to_numpy(query_to_video))
    if qv.shape != (shape[0],) or qv.dtype.kind not in "iu" or qv.min() < 0 or qv.max() >= shape[1]:
        raise ValueError(f"query_to_video: expected ({shape[0]},) integer video columns in [0, {shape[1]})")
    return qv.astype(np.int64)


def group_counts(
    sim: Any, query_to_video: Any, groups: GroupTable, query_chunk: int | None = None
) -> GroupCounts:
    """Within-group counts of every caption, streaming over query-row chunks.

    Args:
        sim: (Q, V) scores (numpy array, memmap or torch tensor); row = caption, column = video.
        query_to_video: (Q,) int, the column of every caption's video.
        groups: one row per column of ``sim`` (:meth:`GroupTable.take` of the scored videos).
        query_chunk: caption rows per chunk (None: all at once); temporaries are (chunk, group size).
    """
    qv = _check(tuple(sim.shape), query_to_video, groups, "average")
    others = _others(groups.group)  # (V, G-1)
    kind_of = np.array([KINDS.index(k) if k else -1 for k in groups.kind.tolist()], np.int64)  # (V,)
    num_q, n_kinds = qv.shape[0], len(KINDS)
    h, e = np.zeros(num_q, np.int64), np.zeros(num_q, np.int64)
    wins, tied, pairs = (np.zeros(n_kinds, np.int64) for _ in range(3))
    chunk = query_chunk or num_q
    for q0 in range(0, num_q, chunk):
        rows = np.arange(q0, min(q0 + chunk, num_q))
        cols = others[qv[rows]]  # (c, G-1)
        real = cols >= 0
        own = _take(sim, rows, qv[rows])[:, None]  # (c, 1)
        other = _take(sim, np.repeat(rows, cols.shape[1]), np.maximum(cols, 0).reshape(-1)).reshape(
            cols.shape
        )
        h[rows] = (real & (other > own)).sum(1)
        e[rows] = (real & (other == own)).sum(1)
        pair = real & (kind_of[qv[rows]] == -1)[:, None]  # target captions x their distractors
        k = kind_of[np.maximum(cols, 0)]
        for i in range(n_kinds):
            sel = pair & (k == i)
            pairs[i] += int(sel.sum())
            wins[i] += int((sel & (own > other)).sum())
            tied[i] += int((sel & (own == other)).sum())
    size = np.where(groups.group[qv] >= 0, (others >= 0).sum(axis=1)[qv] + 1, 0)  # (Q,)
    return GroupCounts(h, e, size, wins, tied, pairs)


def metrics_from_group_counts(counts: GroupCounts, ties: str = "average") -> dict[str, float]:
    """``group_R1``, ``group_R1_chance``, ``pair_acc`` and ``pair_acc_<kind>`` (percent) from the counts;
    empty when no caption has a group of two or more scored videos."""
    if ties not in TIE_POLICIES:
        raise ValueError(f"ties: unknown policy '{ties}', expected one of {TIE_POLICIES}")
    counted = counts.size >= 2
    out: dict[str, float] = {}
    if counted.any():
        h, e = counts.h[counted], counts.e[counted]
        _, hit = rank_outcomes(h, e, np.ones_like(h), (1,), ties)
        out["group_R1"] = float(100.0 * hit[1].mean())
        out["group_R1_chance"] = float(100.0 * (1.0 / counts.size[counted]).mean())
    credit = counts.wins + _TIE_CREDIT[ties] * counts.ties  # (kinds,)
    if counts.pairs.sum() > 0:
        out["pair_acc"] = float(100.0 * credit.sum() / counts.pairs.sum())
    for i, kind in enumerate(KINDS):
        if counts.pairs[i] > 0:
            out[f"pair_acc_{kind}"] = float(100.0 * credit[i] / counts.pairs[i])
    return out
