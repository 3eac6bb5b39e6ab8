"""Which side of a trained model is blind to a binding: text, video, or the match between them.

A model that sits at chance on a kind of distractor (``docs/study.md``: colour and motion swaps) can fail in
three places: its video encoder gives the target and the distractor (nearly) the same embedding, its text
encoder does the same for their captions, or both sides see the difference but the scores do not match
it. For one checkpoint and the test groups of a compositional benchmark this prints, per kind of
distractor and per branch (``global``: the mixture of expert embeddings; ``local``: the NetVLAD
descriptors):

- ``video sep``: mean squared distance between a target's embedding and its distractor's, over the same
  between a target and the targets of other groups (0: the video side cannot tell them apart; order and
  sound moment, which bind, are the reference);
- ``text acc``: over the captions of a target, how often a caption is closer to a paraphrase of its own
  video than to a caption of the distractor (chance 50: the text side does not see the change beyond
  the paraphrasing; a tie counts 0.5);
- ``pair acc``: the binding metric of the branch's score alone (target scored above the distractor,
  chance 50);

and the binding metric of the whole split for a scorer that binds order and sound perfectly and is blind
to colour and motion (:func:`ceiling`): what a model that has learnt only those two bindings can reach;
then the same with colour bound too (what fused object words, ``data.synth.object_words: fused``, let a
model reach while motion stays a phrase).

    python -m benchmarks.binding_probe --checkpoint runs/ray/<study>/train/<trial>/epoch_0039 \
        --root data/compositional-1200 [--groups 90]

Library and PyTorch only (no Ray, no MLflow); CPU, about a minute for 90 groups.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
import torch

from etva.data.sources import load_records
from etva.data.synth.groups import read_group_table
from etva.eval.binding import KINDS, GroupTable, group_counts, metrics_from_group_counts
from etva.inference import encode_records, encode_texts, load_trained


def _flat(emb, part: str) -> torch.Tensor:
    """(B, ...) -> (B, D) of one branch's embedding (global: expert vectors; local: VLAD descriptors)."""
    x = emb.experts if part == "global" else emb.local
    return x.flatten(1).float()


def _groups(table: GroupTable, limit: int) -> list[dict[str, int]]:
    """Groups as {"": target row, kind: distractor row} (one distractor per kind: a group with two colour
    swaps keeps the later), at most ``limit`` of them, from the split's group table."""
    by_group: dict[int, dict[str, int]] = defaultdict(dict)
    for i, (group, kind) in enumerate(zip(table.group, table.kind)):
        by_group[int(group)][str(kind)] = i
    whole = [g for g in by_group.values() if "" in g and len(g) > 1]
    return whole[:limit]


def _video_sep(vid: torch.Tensor, groups: list[dict[str, int]]) -> dict[str, float]:
    targets = vid[[g[""] for g in groups]]
    between = torch.cdist(targets, targets).pow(2)
    off = between[~torch.eye(len(groups), dtype=torch.bool)].mean().item()
    out = {}
    for kind in KINDS:
        pairs = [(g[""], g[kind]) for g in groups if kind in g]
        if pairs:
            t, d = zip(*pairs)
            out[kind] = (vid[list(t)] - vid[list(d)]).pow(2).sum(1).mean().item() / off
    return out


def _text_acc(
    txt: torch.Tensor, caps: dict[int, list[int]], groups: list[dict[str, int]]
) -> dict[str, float]:
    """Share of (caption, paraphrase, distractor caption) triples where the paraphrase is nearer."""
    out = {}
    for kind in KINDS:
        wins = []
        for g in groups:
            if kind not in g:
                continue
            own, other = caps[g[""]], caps[g[kind]]
            d_own = torch.cdist(txt[own], txt[own])  # (n, n), the diagonal excluded below
            d_other = torch.cdist(txt[own], txt[other])  # (n, m)
            mask = ~torch.eye(len(own), dtype=torch.bool)
            near, far = d_own[mask].reshape(len(own), -1)[:, :, None], d_other[:, None, :]
            wins.append(((near < far).float() + 0.5 * (near == far).float()).mean().item())  # a tie: 0.5
        if wins:
            out[kind] = 100.0 * float(np.mean(wins))
    return out


def _above(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of ``a > b``, a tie counting 0.5 (the binding metric's ``average`` policy)."""
    return ((a > b).float() + 0.5 * (a == b).float()).mean().item()


def _pair_acc(
    sim: torch.Tensor, caps: dict[int, list[int]], groups: list[dict[str, int]]
) -> dict[str, float]:
    """sim (captions, videos): share of a target's captions scoring it above the distractor of a kind."""
    out = {}
    for kind in KINDS:
        acc = [_above(sim[caps[g[""]], g[""]], sim[caps[g[""]], g[kind]]) for g in groups if kind in g]
        if acc:
            out[kind] = 100.0 * float(np.mean(acc))
    return out


# the kinds a scorer of the printed ceilings tells apart: what phrase captions allow; and with colour too,
# what fused object words allow (data.synth.object_words, docs/study.md)
CEILINGS = (("order", "sound_moment"), ("order", "sound_moment", "colour"))


def ceiling(groups: GroupTable, visible: tuple[str, ...] = ("order", "sound_moment")) -> dict[str, float]:
    """The binding metric of a scorer that tells apart exactly the changes of the ``visible`` kinds.

    One caption per video. A member of the group differs from the caption's video by its own change and
    the video's (two distractors: both changes); it is scored below the video when one of those is
    visible and tied with it otherwise (a coin flip: ties count their expectation)."""
    vis = np.isin(groups.kind, visible)
    sim = -(vis[None, :] | vis[:, None]).astype(np.float64)  # (captions' videos, videos)
    np.fill_diagonal(sim, 0.0)
    return metrics_from_group_counts(group_counts(sim, np.arange(len(vis)), groups))


@torch.no_grad()
def probe(checkpoint: str, root: str, split: str, limit: int) -> tuple[dict, dict[str, dict[str, float]]]:
    """(the three measures per branch and kind on ``limit`` groups, the ceilings of the whole split by the
    kinds they bind, :data:`CEILINGS`)."""
    model, cfg, tok = load_trained(checkpoint)
    records = load_records(cfg.data.dataset, root, split, cfg.data.subset)
    table = read_group_table(root, [r.video_id for r in records])
    if table is None:
        raise ValueError(f"{root}: not a compositional benchmark (no compositional shapes_manifest.json)")
    groups = _groups(table, limit)
    used = sorted({i for g in groups for i in g.values()})
    pos = {i: k for k, i in enumerate(used)}
    groups = [{kind: pos[i] for kind, i in g.items()} for g in groups]
    enc = encode_records(model, [records[i] for i in used], cfg.data, batch_size=16)
    if enc.failed:
        raise RuntimeError(f"{len(enc.failed)} clips did not decode: {list(enc.failed.values())[:3]}")
    texts, caps = [], {}
    for k, i in enumerate(used):
        caps[k] = list(range(len(texts), len(texts) + len(records[i].captions)))
        texts += records[i].captions
    text = encode_texts(model, tok, texts, cfg.data.max_text_len)
    sims = model.similarity(text, enc.video)
    out = {}
    for part in ("global", "local"):
        if (text.experts if part == "global" else text.local) is None:
            continue
        out[part] = {
            "video sep": _video_sep(_flat(enc.video, part), groups),
            "text acc": _text_acc(_flat(text, part), caps, groups),
            "pair acc": _pair_acc(sims[part], caps, groups),
        }
    out["fused"] = {"pair acc": _pair_acc(sims["fused"], caps, groups)}
    return out, {", ".join(v): ceiling(table, v) for v in CEILINGS}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="a checkpoint directory (model.pt, config.yaml, ...)")
    ap.add_argument("--root", required=True, help="the compositional benchmark's data.root")
    ap.add_argument("--split", default="test")
    ap.add_argument("--groups", type=int, default=90, help="test groups to probe")
    args = ap.parse_args(argv)
    result, ceilings = probe(args.checkpoint, args.root, args.split, args.groups)
    print(f"{'branch':7} {'measure':10} " + " ".join(f"{k:>12}" for k in KINDS))
    for part, measures in result.items():
        for name, row in measures.items():
            print(f"{part:7} {name:10} " + " ".join(f"{row.get(k, float('nan')):12.3f}" for k in KINDS))
    for visible, best in ceilings.items():
        print(
            f"{args.split} split, a scorer that binds {visible} perfectly and is blind to the rest: "
            f"group R@1 {best['group_R1']:.1f} (chance {best['group_R1_chance']:.1f}), pairwise "
            + ", ".join(f"{k} {best[f'pair_acc_{k}']:.1f}" for k in KINDS if f"pair_acc_{k}" in best)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
