"""The compositional mode of the synthetic benchmark: bindings, captions, rendering, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest

from etva.config import SynthConfig
from etva.data.synth import MANIFEST_NAME, SynthError, generate_dataset
from etva.data.synth import compositional as comp
from etva.data.synth.content import _COLOUR_WORDS, _MOTION_WORDS, _SHAPE_WORDS, COLOURS, ClipSpec, ObjectSpec
from etva.data.synth.layouts import plan_msrvtt
from etva.data.synth.render import AUDIO_RATE

CFG = SynthConfig(width=96, height=64, fps=8, duration_s=2.0, captions_per_video=4, mode="compositional")
N = 8


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("comp")
    generate_dataset(out, N, 5, cfg=CFG, workers=2, progress=False)
    return out


def global_stats(spec: comp.CompositionalSpec) -> tuple:
    """What a clip-level pooled view sees: the multisets of colours, shapes and motions, sound, background."""
    objs = [o for ev in spec.events for o in ev.objects]
    return (
        tuple(sorted(o.colour for o in objs)),
        tuple(sorted(o.shape for o in objs)),
        tuple(sorted(o.motion for o in objs)),
        spec.sound,
        spec.background,
    )


def _spec(attrs: dict) -> comp.CompositionalSpec:
    bg = attrs["background"]
    events = tuple(ClipSpec(tuple(ObjectSpec(**o) for o in ev), "silence", bg) for ev in attrs["events"])
    return comp.CompositionalSpec(events, attrs["sound"], attrs["sound_at"], bg)


def test_each_distractor_changes_exactly_its_one_binding_and_keeps_every_global_statistic():
    rng = np.random.default_rng(0)
    for _ in range(300):
        changed, group = comp.sample_group(rng, comp.sample_spec(rng))
        base = group[0]
        assert changed[0] == "" and len(set(changed[1:])) == len(changed) - 1 == 3
        for binding, other in zip(changed[1:], group[1:]):
            assert other != base and global_stats(other) == global_stats(base)
            # exactly this binding: no other single binding change turns the target into it
            assert [b for b in comp.BINDINGS if comp.change_binding(base, b) == other] == [binding]
            if binding.endswith("_swap"):  # one event changed, two of its values exchanged
                k, what = int(binding[5]), binding.split(".")[1].removesuffix("_swap")
                assert other.events[1 - k] == base.events[1 - k]
                a, b = base.events[k].objects
                x, y = other.events[k].objects
                assert (getattr(x, what), getattr(y, what)) == (getattr(b, what), getattr(a, what))
                assert (x.shape, y.shape) == (a.shape, b.shape)


def _phrase_at(caption: str, obj: ObjectSpec) -> int:
    """Position of '<colour> <shape> <motion>' for the object (any synonyms), -1 when absent."""
    found = [
        caption.find(f"{c} {s} {m}")
        for c in _COLOUR_WORDS[obj.colour]
        for s in _SHAPE_WORDS[obj.shape]
        for m in _MOTION_WORDS[obj.motion]
    ]
    return max(found)


def test_captions_name_each_object_with_its_bindings_in_event_order(dataset):
    videos = json.loads((dataset / MANIFEST_NAME).read_text())["videos"]
    sentences = json.loads((dataset / "MSRVTT_data.json").read_text())["sentences"]
    assert len(sentences) == N * CFG.captions_per_video
    for s in sentences:
        spec, cap = _spec(videos[s["video_id"]]["attributes"]), s["caption"]
        first = [_phrase_at(cap, o) for o in spec.events[0].objects]
        second = [_phrase_at(cap, o) for o in spec.events[1].objects]
        assert min(first + second) >= 0, cap
        assert max(first) < min(second), cap  # the first event is told first
        assert any(w in cap for w in comp.MOMENT_WORDS[spec.sound_at]), cap
        assert not any(w in cap for w in comp.MOMENT_WORDS[comp.MOMENTS[1 - comp.MOMENTS.index(spec.sound_at)]])


def test_manifest_groups_follow_the_declared_bindings(dataset):
    videos = json.loads((dataset / MANIFEST_NAME).read_text())["videos"]
    by_group: dict[int, list[dict]] = {}
    for v in videos.values():
        by_group.setdefault(v["group"], []).append(v)
    for members in by_group.values():
        target = _spec(members[0]["attributes"])
        assert members[0]["changed_binding"] == ""
        for m in members[1:]:
            assert _spec(m["attributes"]) == comp.change_binding(target, m["changed_binding"])


def test_rendered_clip_shows_the_bindings_per_event_and_the_sound_at_its_moment(dataset):
    videos = json.loads((dataset / MANIFEST_NAME).read_text())["videos"]
    half = int(CFG.fps * CFG.duration_s / 2)
    expected = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "static": (0, 0)}
    for v in list(videos.values())[:4]:
        spec = _spec(v["attributes"])
        with av.open(str(dataset / v["path"])) as c:
            frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).astype(float)
        with av.open(str(dataset / v["path"])) as c:
            audio = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
        for k, ev in enumerate(spec.events):
            seg = frames[k * half : (k + 1) * half]
            for obj in ev.objects:  # this colour, in this event, moves this way
                mask = np.abs(seg - np.array(COLOURS[obj.colour], float)).sum(-1) < 70
                (y0, x0), (y1, x1) = (np.argwhere(mask[t]).mean(0) for t in (0, -1))
                moved = (int(np.sign(round((x1 - x0) / 6))), int(np.sign(round((y1 - y0) / 6))))
                assert moved == expected[obj.motion], (v["path"], k, obj, moved)
        n = AUDIO_RATE  # one second per event
        loud = [float(np.abs(audio[i * n + 2000 : (i + 1) * n - 2000]).mean()) for i in range(2)]
        at = comp.MOMENTS.index(spec.sound_at)
        assert loud[at] > 0.02 and loud[1 - at] < 0.05 * loud[at], (v["path"], loud)  # AAC delay: a small leak


def test_same_seed_same_plan_other_seed_other_plan():
    a, b, c = plan_msrvtt(16, 1, CFG), plan_msrvtt(16, 1, CFG), plan_msrvtt(16, 2, CFG)
    assert a.files == b.files and a.jobs == b.jobs and a.videos == b.videos
    assert a.files["MSRVTT_data.json"] != c.files["MSRVTT_data.json"]


def test_other_layouts_are_refused(tmp_path):
    with pytest.raises(SynthError, match="msrvtt layout only"):
        generate_dataset(tmp_path / "x", 4, 0, fmt="lsmdc", cfg=CFG, progress=False)
