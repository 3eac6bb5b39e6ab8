"""Can the study's text encoder bind a colour or a motion to a shape at all, given a direct signal?

``benchmarks.binding_probe`` shows that after contrastive training the text encoder does not tell "the
golden disc and the amber cross" from "the amber disc and the golden cross". This asks whether that is the
architecture or the training signal, with a supervised task that is exactly the binding: for every object
of every event, a head on the caption's pooled feature (the feature the global branch uses) scores the
colours and the motions of each (event, shape), and the object's own colour (motion) must score above
the other object's of the same event. A bag of words knows both colours but not which shape has which:
chance is 50 %. Two readings, on the test split's captions:

- ``scratch``: the text encoder of a checkpoint's config, from a fresh initialisation, trained with the
  head on the training captions: what the architecture learns when told the binding directly;
- ``trained``: the head alone, on the frozen pooled feature of the checkpoint's own (contrastively
  trained) text encoder: what the study's training put there;

and, beside them, ``bigram``: the head on position-tagged word bigrams (which half of the caption, word,
next word): a reference that sees adjacency and nothing else.

    python -m benchmarks.text_binding --checkpoint runs/ray/<study>/train/<trial>/epoch_0039 \
        --root data/compositional-1200 [--steps 1500]

Library and PyTorch only (no Ray, no MLflow); CPU, a few minutes at the default steps.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn

from etva.data.sources import load_records
from etva.data.synth.content import COLOURS, MOTIONS, SHAPES
from etva.data.synth.generate import MANIFEST_NAME
from etva.data.tokenizer import tokenize
from etva.inference import load_trained
from etva.model.text import build_text_encoder

LABELS = ("event0 colour", "event0 motion", "event1 colour", "event1 motion")
_COLOURS, _N_SHAPES = tuple(COLOURS), len(SHAPES)
_SLOTS = len(_COLOURS) + len(MOTIONS)  # a head's scores per (event, shape): colours, then motions


def targets(events: list[list[dict]]) -> list[list[list[int]]]:
    """Per event and object of one clip (manifest ``attributes.events``): [shape, own colour, the other
    object's colour, own motion, the other object's motion] as indices into the head's scores."""
    out = []
    for objects in events:
        rows = []
        for k, o in enumerate(objects):
            other = objects[1 - k]
            rows.append([
                SHAPES.index(o["shape"]),
                _COLOURS.index(o["colour"]), _COLOURS.index(other["colour"]),
                len(_COLOURS) + MOTIONS.index(o["motion"]), len(_COLOURS) + MOTIONS.index(other["motion"]),
            ])  # fmt: skip
        out.append(rows)
    return out


def margins(scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """scores (B, events * shapes * slots), y (B, events, 2, 5) -> (B, events, 2, 2): own minus other
    score of each object's colour and motion (> 0: the binding is right)."""
    b, events = y.shape[0], y.shape[1]
    s = scores.reshape(b, events, _N_SHAPES, _SLOTS)
    at = s[torch.arange(b)[:, None, None], torch.arange(events)[None, :, None], y[..., 0]]  # (B, E, 2, slots)
    pick = lambda col: at.gather(-1, y[..., col : col + 1]).squeeze(-1)  # noqa: E731
    return torch.stack([pick(1) - pick(2), pick(3) - pick(4)], dim=-1)


def _split(root: Path, cfg, split: str, tok) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input ids, attention mask, labels) of every caption of ``split``."""
    videos = json.loads((root / MANIFEST_NAME).read_text())["videos"]
    texts, ys = [], []
    for r in load_records(cfg.data.dataset, root, split, cfg.data.subset):
        y = targets(videos[r.video_id]["attributes"]["events"])
        texts += r.captions
        ys += [y] * len(r.captions)
    ids, mask = tokenize(tok, texts, cfg.data.max_text_len)
    return torch.as_tensor(ids), torch.as_tensor(mask), torch.tensor(ys, dtype=torch.long)


def _pooled(encoder: nn.Module, ids: torch.Tensor, mask: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """The encoder's pooled feature of every caption, ``chunk`` captions at a time."""
    return torch.cat(
        [encoder(ids[i : i + chunk], mask[i : i + chunk]).pooled for i in range(0, len(ids), chunk)]
    )


def _fit(encoder: nn.Module | None, feats, train, steps: int, seed: int) -> nn.Module:
    """Train the head (and ``encoder`` when given) on the training captions; returns the head."""
    torch.manual_seed(seed)
    ids, mask, y = train
    width = feats.shape[1] if encoder is None else encoder.hidden_size
    head = nn.Linear(width, y.shape[1] * _N_SHAPES * _SLOTS)
    params = list(head.parameters()) + ([] if encoder is None else list(encoder.parameters()))
    opt = torch.optim.AdamW(params, lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        pick = torch.randint(len(y), (64,), generator=gen)
        x = feats[pick] if encoder is None else _pooled(encoder, ids[pick], mask[pick])
        loss = nn.functional.softplus(-margins(head(x), y[pick])).mean()  # logistic: own above other
        opt.zero_grad()
        loss.backward()
        opt.step()
    return head


def _accuracy(scores: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    m = margins(scores, y)  # (B, E, 2, 2)
    right = ((m > 0).float() + 0.5 * (m == 0).float()).mean(dim=(0, 2))  # (E, 2): colour, motion
    return {name: 100.0 * float(v) for name, v in zip(LABELS, right.flatten())}


def _bigrams(ids: torch.Tensor, mask: torch.Tensor, vocab: int) -> torch.Tensor:
    """(N, 2 * vocab * vocab) counts of (half of the caption, token, next token) (sparse, coalesced)."""
    n, length = ids.shape
    lens = mask.sum(1, keepdim=True)
    pos = torch.arange(length - 1)[None, :].expand(n, -1)
    keep = mask[:, 1:].bool()
    half = (2 * pos >= lens - 1).long()
    key = (half * vocab + ids[:, :-1]) * vocab + ids[:, 1:]
    rows = torch.arange(n)[:, None].expand(n, length - 1)
    idx = torch.stack([rows[keep], key[keep]])
    shape = (n, 2 * vocab * vocab)
    return torch.sparse_coo_tensor(idx, torch.ones(idx.shape[1]), shape, check_invariants=True).coalesce()


def check(checkpoint: str, root: str, steps: int, seed: int = 0) -> dict[str, dict[str, float]]:
    """{"scratch" | "trained" | "bigram": accuracy per label} on the test split's captions."""
    model, cfg, tok = load_trained(checkpoint)
    train, test = (_split(Path(root), cfg, s, tok) for s in ("train", "test"))
    out = {}
    torch.manual_seed(seed)
    scratch = build_text_encoder(cfg.model.text, len(tok))
    head = _fit(scratch, None, train, steps, seed)
    with torch.no_grad():
        out["scratch"] = _accuracy(head(_pooled(scratch.eval(), test[0], test[1])), test[2])
        feats_train, feats_test = (_pooled(model.text.eval(), s[0], s[1]) for s in (train, test))
    head = _fit(None, feats_train, train, steps, seed)
    with torch.no_grad():
        out["trained"] = _accuracy(head(feats_test), test[2])
    grams_train, grams_test = (_bigrams(s[0], s[1], len(tok)) for s in (train, test))
    used = torch.unique(grams_train.indices()[1])  # bigrams never seen in training carry no weight
    dense = lambda g: g.index_select(1, used).to_dense()  # noqa: E731
    head = _fit(None, dense(grams_train), train, steps, seed)
    with torch.no_grad():
        out["bigram"] = _accuracy(head(dense(grams_test)), test[2])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="a study trial's checkpoint directory")
    ap.add_argument("--root", required=True, help="the compositional benchmark's data.root")
    ap.add_argument("--steps", type=int, default=1500, help="training steps of 64 captions")
    args = ap.parse_args(argv)
    result = check(args.checkpoint, args.root, args.steps)
    print(
        f"{'text encoder':14} "
        + " ".join(f"{k:>14}" for k in LABELS)
        + "   (test captions, % right, chance 50)"
    )
    for name, row in result.items():
        print(f"{name:14} " + " ".join(f"{row[k]:14.1f}" for k in LABELS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
