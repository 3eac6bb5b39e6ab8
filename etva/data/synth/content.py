"""Content of the synthetic "shapes" benchmark: attribute vocabulary, clip specs, hard-negative
groups and paraphrased captions.

Each attribute is carried by one modality: colour and shape by appearance, motion direction by
motion, the sound by audio, the background shade by appearance. Clips are sampled in groups whose
members differ from each other in exactly one attribute (hard negatives), and every caption names
every attribute, so each distinguishing attribute is learnable from the text.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

__all__ = [
    "COLOURS",
    "SHAPES",
    "MOTIONS",
    "SOUNDS",
    "BACKGROUNDS",
    "ObjectSpec",
    "ClipSpec",
    "sample_spec",
    "sample_group",
    "make_captions",
    "vocabulary",
]

# RGB of saturated, well separated colours
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25),
    "green": (20, 190, 40),
    "blue": (30, 70, 235),
    "yellow": (245, 220, 20),
    "purple": (150, 40, 210),
    "orange": (250, 130, 10),
}
SHAPES = ("circle", "square", "triangle", "cross")
MOTIONS = ("left", "right", "up", "down", "static")
SOUNDS = ("low", "high", "noise", "silence")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"black": (12, 12, 12), "gray": (110, 110, 110)}

_COLOUR_WORDS = {
    "red": ["red", "crimson", "scarlet"],
    "green": ["green", "emerald"],
    "blue": ["blue", "azure"],
    "yellow": ["yellow", "golden"],
    "purple": ["purple", "violet"],
    "orange": ["orange", "amber"],
}
_SHAPE_WORDS = {
    "circle": ["circle", "disc", "ball"],
    "square": ["square", "box", "block"],
    "triangle": ["triangle", "triangular shape", "wedge"],
    "cross": ["cross", "plus sign", "plus shape"],
}
_MOTION_WORDS = {
    "left": ["moves left", "slides to the left", "travels leftward", "drifts to the left", "goes left"],
    "right": ["moves right", "slides to the right", "travels rightward", "drifts to the right", "goes right"],
    "up": ["moves up", "rises", "floats upward", "climbs up", "goes up"],
    "down": ["moves down", "falls", "sinks downward", "drops down", "goes down"],
    "static": ["stays still", "does not move", "sits still", "remains in place", "stays motionless"],
}
# full clauses ("while ...") and short noun phrases (", high-pitched tone")
_SOUND_CLAUSES = {
    "low": ["a low tone plays", "a deep hum sounds", "a low-pitched beep plays"],
    "high": ["a high beep plays", "a high-pitched tone sounds", "a shrill whistle plays"],
    "noise": ["static noise hisses", "white noise plays", "a hissing noise sounds"],
    "silence": ["nothing can be heard", "there is no sound", "all is silent"],
}
_SOUND_SHORT = {
    "low": ["a low tone", "a deep hum", "a low-pitched beep"],
    "high": ["a high beep", "a high-pitched tone", "a shrill whistle"],
    "noise": ["static noise", "white noise", "a hissing noise"],
    "silence": ["no sound", "silence", "no audio"],
}
_BACKGROUND_WORDS = {
    "black": ["on a black background", "against a dark backdrop", "on black"],
    "gray": ["on a gray background", "against a grey backdrop", "on gray"],
}
_TEMPLATES = (
    "{objs} {bg} while {clause}",
    "while {clause}, {objs} {bg}",
    "{objs} {bg}, {short}",
    "with {short}, {objs} {bg}",
    "{objs} {bg} and {clause}",
)
_AXIS = {"left": "h", "right": "h", "up": "v", "down": "v", "static": None}


@dataclass(frozen=True)
class ObjectSpec:
    colour: str
    shape: str
    motion: str


@dataclass(frozen=True)
class ClipSpec:
    """What one clip (or one ActivityNet event) shows and plays."""

    objects: tuple[ObjectSpec, ...]
    sound: str
    background: str

    def attributes(self) -> dict:
        return {
            "objects": [asdict(o) for o in self.objects],
            "sound": self.sound,
            "background": self.background,
        }


def _values(attr: str) -> tuple[str, ...]:
    name = attr.split(".")[-1]
    return {
        "colour": tuple(COLOURS),
        "shape": SHAPES,
        "motion": MOTIONS,
        "sound": SOUNDS,
        "background": tuple(BACKGROUNDS),
    }[name]


def _get(spec: ClipSpec, attr: str) -> str:
    if attr.startswith("obj"):
        i, name = attr[3:].split(".")
        return getattr(spec.objects[int(i)], name)
    return getattr(spec, attr)


def _set(spec: ClipSpec, attr: str, value: str) -> ClipSpec:
    if attr.startswith("obj"):
        i, name = attr[3:].split(".")
        objs = list(spec.objects)
        objs[int(i)] = replace(objs[int(i)], **{name: value})
        return replace(spec, objects=tuple(objs))
    return replace(spec, **{attr: value})


def is_valid(spec: ClipSpec) -> bool:
    """Two objects need distinct colours and motions on one axis (so they never cross)."""
    if len(spec.objects) == 2:
        a, b = spec.objects
        axes = {_AXIS[a.motion], _AXIS[b.motion]} - {None}
        return a.colour != b.colour and len(axes) <= 1
    return True


def sample_spec(rng: np.random.Generator, two_object_prob: float = 0.35) -> ClipSpec:
    """A random valid clip spec with one or two objects."""
    n_obj = 2 if rng.random() < two_object_prob else 1
    while True:
        objs = tuple(
            ObjectSpec(
                colour=str(rng.choice(list(COLOURS))),
                shape=str(rng.choice(SHAPES)),
                motion=str(rng.choice(MOTIONS)),
            )
            for _ in range(n_obj)
        )
        spec = ClipSpec(objs, sound=str(rng.choice(SOUNDS)), background=str(rng.choice(list(BACKGROUNDS))))
        if is_valid(spec):
            return spec


def variable_attributes(spec: ClipSpec) -> list[str]:
    """Attribute keys of ``spec`` that a hard negative may change (``obj0.colour``, ``sound``, ...)."""
    keys = [f"obj{i}.{name}" for i in range(len(spec.objects)) for name in ("colour", "shape", "motion")]
    return keys + ["sound", "background"]


def sample_group(rng: np.random.Generator, base: ClipSpec, size: int) -> tuple[str, list[ClipSpec]]:
    """``base`` plus up to ``size - 1`` variants; all members differ pairwise in one attribute.

    Returns:
        (the varied attribute key, the group's specs with ``base`` first).
    """
    attrs = variable_attributes(base)
    attr = attrs[int(rng.integers(len(attrs)))]
    options = [v for v in _values(attr) if v != _get(base, attr) and is_valid(_set(base, attr, v))]
    picks = rng.permutation(len(options))[: max(0, size - 1)]
    return attr, [base] + [_set(base, attr, options[int(i)]) for i in picks]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _object_phrase(obj: ObjectSpec, rng: np.random.Generator) -> str:
    colour = str(rng.choice(_COLOUR_WORDS[obj.colour]))
    shape = str(rng.choice(_SHAPE_WORDS[obj.shape]))
    motion = str(rng.choice(_MOTION_WORDS[obj.motion]))
    return f"{_article(colour)} {colour} {shape} {motion}"


def caption(spec: ClipSpec, rng: np.random.Generator) -> str:
    """One paraphrase naming every attribute of ``spec`` (synonyms, word and object order vary)."""
    order = rng.permutation(len(spec.objects))
    objs = " and ".join(_object_phrase(spec.objects[int(i)], rng) for i in order)
    template = str(rng.choice(_TEMPLATES))
    return template.format(
        objs=objs,
        bg=str(rng.choice(_BACKGROUND_WORDS[spec.background])),
        clause=str(rng.choice(_SOUND_CLAUSES[spec.sound])),
        short=str(rng.choice(_SOUND_SHORT[spec.sound])),
    )


def make_captions(spec: ClipSpec, rng: np.random.Generator, k: int) -> list[str]:
    """``k`` paraphrases, distinct where the vocabulary allows."""
    out: list[str] = []
    for _ in range(20 * k):
        c = caption(spec, rng)
        if c not in out:
            out.append(c)
        if len(out) == k:
            return out
    while len(out) < k:  # pragma: no cover - the vocabulary has far more than 20 paraphrases
        out.append(caption(spec, rng))
    return out


def vocabulary() -> dict:
    """The attribute values (for the manifest)."""
    return {
        "colour": {k: list(v) for k, v in COLOURS.items()},
        "shape": list(SHAPES),
        "motion": list(MOTIONS),
        "sound": list(SOUNDS),
        "background": {k: list(v) for k, v in BACKGROUNDS.items()},
    }
