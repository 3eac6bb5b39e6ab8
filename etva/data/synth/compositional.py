"""The compositional mode of the synthetic benchmark (``data.synth.mode: compositional``).

A clip is two events in order (first half, second half), each showing two objects whose colour, shape
and motion are bound to each other (the red one moves left, the blue one rises), plus one sound that
plays during one of the two events only ("a high beep at the start"). Clips come in groups: a target
and distractors that each differ from it in exactly ONE binding and in nothing else:

- ``event{k}.colour_swap``: the two objects of event k exchange colours;
- ``event{k}.motion_swap``: the two objects of event k exchange motions;
- ``order``: the two events play in the other order;
- ``sound_moment``: the sound plays during the other event.

Every such change keeps every global statistic of the clip: the same colours, shapes, motions, sound
and background, in the same amounts (the multisets of colours, shapes and motions). A model that pools each modality over the
clip (the global alignment alone) sees a target and its distractors as identical; telling them apart
needs word-to-moment/region matching (the fine-grained alignment). Captions name both events in order,
each object with its bound attributes, and when the sound plays, in paraphrased forms (synonyms, object
order, templates of order and of the moment).

Object words (``data.synth.object_words``): ``phrase`` names an object as "a golden disc" (colour and shape
words, with synonyms, side by side); ``fused`` names it as one word of its colour and shape ("a
yellowcircle", no synonyms), which the caption tokenizer keeps as one piece. With phrases, a text encoder
must learn from the word order which colour goes with which shape, and an ALBERT trained from scratch here
does not (``benchmarks/text_binding.py``); with fused words the colour binding is in the words themselves,
and what is left to learn is the video side's. Motion stays a phrase in both.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import get_args

import numpy as np

from etva.config.choices import ObjectWords
from etva.data.synth.content import (
    _BACKGROUND_WORDS,
    _MOTION_WORDS,
    _SOUND_SHORT,
    BACKGROUNDS,
    COLOURS,
    MOTIONS,
    SHAPES,
    ClipSpec,
    ObjectSpec,
    _article,
    _object_phrase,
    is_valid,
)

__all__ = [
    "SOUNDS",
    "MOMENTS",
    "BINDINGS",
    "CompositionalSpec",
    "sample_spec",
    "change_binding",
    "sample_group",
    "grouped_specs",
    "OBJECT_WORDS",
    "fused_word",
    "caption",
    "make_captions",
]

SOUNDS = ("low", "high", "noise")  # no silence: the sound's moment must be audible
MOMENTS = ("start", "end")
BINDINGS = (
    "event0.colour_swap",
    "event0.motion_swap",
    "event1.colour_swap",
    "event1.motion_swap",
    "order",
    "sound_moment",
)
OBJECT_WORDS = get_args(ObjectWords)  # data.synth.object_words
GROUP_SIZE = 4  # a target and three distractors, each changing a different binding

MOMENT_WORDS = {
    "start": ["at the start", "at the beginning", "early on", "in the first half"],
    "end": ["at the end", "near the end", "later on", "in the second half"],
}
_ORDER_TEMPLATES = (
    "first {a}, then {b}",
    "{a}, and afterwards {b}",
    "{a}; after that {b}",
    "to begin with {a}, later {b}",
)
_SOUND_TEMPLATES = ("{sound} plays {moment}", "{moment} {sound} sounds", "{sound} is heard {moment}")
_TEMPLATES = ("{events} {bg}, and {sound}", "{sound}, while {events} {bg}", "{events} {bg}; {sound}")


@dataclass(frozen=True)
class CompositionalSpec:
    """Two events (two objects each, same background) and one sound during one of them."""

    events: tuple[ClipSpec, ClipSpec]
    sound: str
    sound_at: str  # "start" (during events[0]) or "end" (during events[1])
    background: str

    def segments(self, duration: float) -> list[tuple[ClipSpec, float, float]]:
        """The renderer's segments: event k over its half, with the sound only where it plays."""
        half = duration / 2.0
        moment = MOMENTS.index(self.sound_at)
        return [
            (replace(ev, sound=self.sound if k == moment else "silence"), k * half, (k + 1) * half)
            for k, ev in enumerate(self.events)
        ]

    def segment_seeds(self, group_seed: int) -> tuple[int, ...]:
        """A rendering seed per event from the group's seed and the event's shapes: the swaps keep it, so an
        event is drawn at the same positions in every clip of its group and in either half."""
        return tuple(
            int(
                np.random.SeedSequence(
                    [group_seed, *(SHAPES.index(o.shape) for o in ev.objects)]
                ).generate_state(1)[0]
            )
            for ev in self.events
        )

    def attributes(self) -> dict:
        return {
            "events": [[vars(o).copy() for o in ev.objects] for ev in self.events],
            "sound": self.sound,
            "sound_at": self.sound_at,
            "background": self.background,
        }


def _event(rng: np.random.Generator, background: str) -> ClipSpec:
    """Two objects with distinct colours, shapes and motions (so every swap changes the clip)."""
    while True:
        colours = rng.choice(list(COLOURS), 2, replace=False)
        shapes = rng.choice(SHAPES, 2, replace=False)
        motions = rng.choice(MOTIONS, 2, replace=False)
        objs = tuple(ObjectSpec(str(c), str(s), str(m)) for c, s, m in zip(colours, shapes, motions))
        spec = ClipSpec(objs, sound="silence", background=background)
        if is_valid(spec):
            return spec


def sample_spec(rng: np.random.Generator) -> CompositionalSpec:
    background = str(rng.choice(list(BACKGROUNDS)))
    first = _event(rng, background)
    second = _event(rng, background)
    while second.objects == first.objects:  # pragma: no cover - astronomically rare
        second = _event(rng, background)
    return CompositionalSpec((first, second), str(rng.choice(SOUNDS)), str(rng.choice(MOMENTS)), background)


def _swap(ev: ClipSpec, field: str) -> ClipSpec:
    a, b = ev.objects
    va, vb = getattr(a, field), getattr(b, field)
    return replace(ev, objects=(replace(a, **{field: vb}), replace(b, **{field: va})))


def change_binding(spec: CompositionalSpec, binding: str) -> CompositionalSpec:
    """``spec`` with exactly one binding changed (one of :data:`BINDINGS`)."""
    if binding == "order":
        return replace(spec, events=(spec.events[1], spec.events[0]))
    if binding == "sound_moment":
        return replace(spec, sound_at=MOMENTS[1 - MOMENTS.index(spec.sound_at)])
    if binding not in BINDINGS:
        raise ValueError(f"unknown binding {binding!r}, expected one of {BINDINGS}")
    k, what = int(binding[5]), binding.split(".")[1].removesuffix("_swap")
    events = list(spec.events)
    events[k] = _swap(events[k], what)
    return replace(spec, events=tuple(events))


def sample_group(
    rng: np.random.Generator, base: CompositionalSpec, size: int = GROUP_SIZE
) -> tuple[list[str], list[CompositionalSpec]]:
    """``base`` and ``size - 1`` distractors, each changing a different binding of ``base``.

    Returns (the binding each member changes, "" for the target; the specs, target first).
    """
    picks = [BINDINGS[int(i)] for i in rng.permutation(len(BINDINGS))[: size - 1]]
    return ["", *picks], [base, *(change_binding(base, b) for b in picks)]


def grouped_specs(rng: np.random.Generator, n: int) -> tuple[list[CompositionalSpec], list[int], list[str]]:
    """``n`` specs in distractor groups: (specs, group id per clip, changed binding per clip)."""
    specs: list[CompositionalSpec] = []
    groups: list[int] = []
    changed: list[str] = []
    while len(specs) < n:
        bindings, members = sample_group(rng, sample_spec(rng))
        take = n - len(specs)
        group = groups[-1] + 1 if groups else 0
        specs += members[:take]
        changed += bindings[:take]
        groups += [group] * len(members[:take])
    return specs, groups, changed


def fused_word(obj: ObjectSpec) -> str:
    """The one word naming ``obj``'s colour and shape (``object_words: fused``): "yellowcircle"."""
    return f"{obj.colour}{obj.shape}"


def _fused_phrase(obj: ObjectSpec, rng: np.random.Generator) -> str:
    word = fused_word(obj)
    return f"{_article(word)} {word} {rng.choice(_MOTION_WORDS[obj.motion])}"


def _event_phrase(ev: ClipSpec, rng: np.random.Generator, object_words: str) -> str:
    order = rng.permutation(2)
    name = _fused_phrase if object_words == "fused" else _object_phrase
    return " and ".join(name(ev.objects[int(i)], rng) for i in order)


def caption(spec: CompositionalSpec, rng: np.random.Generator, object_words: str = "phrase") -> str:
    """One paraphrase: both events in order, each object with its bindings, and when the sound plays."""
    if object_words not in OBJECT_WORDS:
        raise ValueError(f"unknown object_words {object_words!r}, expected one of {OBJECT_WORDS}")
    events = str(rng.choice(_ORDER_TEMPLATES)).format(
        a=_event_phrase(spec.events[0], rng, object_words), b=_event_phrase(spec.events[1], rng, object_words)
    )
    sound = str(rng.choice(_SOUND_TEMPLATES)).format(
        sound=str(rng.choice(_SOUND_SHORT[spec.sound])), moment=str(rng.choice(MOMENT_WORDS[spec.sound_at]))
    )
    bg = str(rng.choice(_BACKGROUND_WORDS[spec.background]))
    return str(rng.choice(_TEMPLATES)).format(events=events, bg=bg, sound=sound)


def make_captions(
    spec: CompositionalSpec, rng: np.random.Generator, k: int, object_words: str = "phrase"
) -> list[str]:
    """``k`` distinct paraphrases."""
    out: list[str] = []
    while len(out) < k:
        c = caption(spec, rng, object_words)
        if c not in out:
            out.append(c)
    return out
