"""Dataset layouts of the synthetic benchmark: MSRVTT, ActivityNet Captions and LSMDC.

Each ``plan_*`` function decides everything about a dataset in memory (clip specs, captions,
splits, annotation file contents) and returns a :class:`Plan`; the generator then renders the
clips and writes the files. Split sizes follow the real datasets' proportions.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from etva.config import SynthConfig
from etva.data.synth import compositional as comp
from etva.data.synth.content import ClipSpec, caption, make_captions, sample_group, sample_spec
from etva.data.synth.render import ClipJob

__all__ = ["Plan", "LAYOUTS", "split_sizes"]

GROUP_SIZE = 4  # clips per hard-negative group
MOVIE_SIZE = 10  # LSMDC clips per movie
ACTIVITYNET_SCALE = 3.0  # ActivityNet clips are this many times longer than cfg.duration_s


@dataclass
class Plan:
    jobs: list[ClipJob]
    files: dict[str, str]  # relative path -> text content of each annotation file
    splits: dict[str, int]  # split name -> number of videos
    num_captions: int
    videos: dict[str, dict] = field(default_factory=dict)  # manifest entry per video id


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream])


def _clip_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, 99, index]).generate_state(1)[0])


def split_sizes(n: int, fractions: list[float]) -> list[int]:
    """Sizes of the non-first splits (rounded shares of ``n``, each >= 1 while videos remain);
    the first split gets the rest."""
    sizes = []
    for i, f in enumerate(fractions[1:]):
        k = round(n * f)
        if n >= i + 2:  # enough videos to give this split one and keep one for the first
            k = max(1, k)
        sizes.append(k)
    return [n - sum(sizes), *sizes]


def _grouped_specs(rng: np.random.Generator, n: int) -> tuple[list[ClipSpec], list[int], list[str]]:
    """``n`` clip specs in hard-negative groups: (specs, group id per clip, varied attribute per group)."""
    specs: list[ClipSpec] = []
    groups: list[int] = []
    attrs: list[str] = []
    while len(specs) < n:
        attr, members = sample_group(rng, sample_spec(rng), GROUP_SIZE)
        members = members[: n - len(specs)]
        specs += members
        groups += [len(attrs)] * len(members)
        attrs.append(attr)
    return specs, groups, attrs


def _per_group(groups: list[int], changed: list[str]) -> list[str]:
    """Compositional groups: per group, the bindings its distractors change ("a|b|c"), by group id."""
    out: dict[int, list[str]] = {}
    for g, c in zip(groups, changed):
        out.setdefault(g, []).extend([c] if c else [])
    return ["|".join(out[g]) for g in sorted(out)]


def _negatives(ids: list[str], groups: list[int]) -> list[list[str]]:
    by_group: dict[int, list[str]] = {}
    for vid, g in zip(ids, groups):
        by_group.setdefault(g, []).append(vid)
    return [[o for o in by_group[g] if o != vid] for vid, g in zip(ids, groups)]


def _pick_by_groups(
    candidates: list[int], groups: list[int], k: int, rng: np.random.Generator, whole: bool = False
) -> list[int]:
    """``k`` of ``candidates``, taking whole hard-negative groups in random order (the last may be cut;
    ``whole``: it is not, so at least ``k`` are taken and no group straddles the pick)."""
    order: list[int] = []
    for c in candidates:
        if groups[c] not in order:
            order.append(groups[c])
    picked: list[int] = []
    for gi in rng.permutation(len(order)):
        picked += [c for c in candidates if groups[c] == order[int(gi)]]
        if len(picked) >= k:
            break
    return sorted(picked if whole else picked[:k])


def _group_split_sizes(groups: list[int], fractions: list[float]) -> list[int]:
    """Videos per split when every split holds whole groups (groups are contiguous runs of ``groups``):
    :func:`split_sizes` over the groups, then counted in videos."""
    first = [i for i, g in enumerate(groups) if i == 0 or g != groups[i - 1]] + [len(groups)]
    bounds = np.cumsum([0, *split_sizes(len(first) - 1, fractions)])
    return [first[b] - first[a] for a, b in zip(bounds[:-1], bounds[1:])]


def _csv(header: list[str] | None, rows: list[list], delimiter: str = ",") -> str:
    buf = io.StringIO()
    w = csv.writer(buf, delimiter=delimiter, lineterminator="\n")
    if header:
        w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _lines(ids: list[str]) -> str:
    return "".join(f"{v}\n" for v in ids)


def _job(
    path: str,
    spec_segments: list,
    duration: float,
    cfg: SynthConfig,
    seed: int,
    segment_seeds: tuple = (),
    aligned_sound: bool = False,
) -> ClipJob:
    return ClipJob(
        path, tuple(spec_segments), duration, cfg.width, cfg.height, cfg.fps, seed, segment_seeds, aligned_sound
    )


def _msrvtt_json(
    ids: list[str], groups: list[int], split: list[str], captions: list[list[str]], d: float
) -> dict:
    """``MSRVTT_data.json`` content with the real file's keys."""
    videos = [
        {"category": g % 20, "url": f"synthetic://shapes/{v}", "video_id": v, "start time": 0.0,
         "end time": d, "split": sp, "id": i}
        for i, (v, g, sp) in enumerate(zip(ids, groups, split))
    ]  # fmt: skip
    k = len(captions[0]) if captions else 0
    sentences = [
        {"caption": c, "video_id": v, "sen_id": i * k + j}
        for i, (v, caps) in enumerate(zip(ids, captions))
        for j, c in enumerate(caps)
    ]
    return {"info": {"description": "synthetic shapes benchmark (etva)", "version": "1.0"}, "videos": videos,
            "sentences": sentences}  # fmt: skip


def _single_clips(ids, paths, split, specs, groups, attrs, cfg: SynthConfig, seed: int) -> tuple[list, dict]:
    """Render jobs and manifest entries of one-event clips (MSRVTT, LSMDC)."""
    d, negs = float(cfg.duration_s), _negatives(ids, groups)
    jobs, videos = [], {}
    for i, (v, s) in enumerate(zip(ids, specs)):
        if isinstance(s, comp.CompositionalSpec):  # one seed per group: its clips differ only in the binding
            group_seed = int(np.random.SeedSequence([seed, 98, groups[i]]).generate_state(1)[0])
            seeds = s.segment_seeds(group_seed)
            jobs.append(_job(paths[i], s.segments(d), d, cfg, group_seed, seeds, aligned_sound=True))
        else:
            jobs.append(_job(paths[i], [(s, 0.0, d)], d, cfg, _clip_seed(seed, i)))
        videos[v] = {"path": paths[i], "split": split[i], "group": groups[i], "varied_attribute": attrs[groups[i]],
                     "hard_negatives": negs[i], "attributes": s.attributes()}  # fmt: skip
    return jobs, videos


def plan_msrvtt(num_videos: int, seed: int, cfg: SynthConfig) -> Plan:
    """MSRVTT: ``videos/all/videoN.mp4``, ``MSRVTT_data.json`` and the 1k-A/1k-B/Full/7k split files."""
    compositional = cfg.mode == "compositional"
    if compositional:  # distractors differ in one binding each; "varied attribute" = the binding
        specs, groups, changed = comp.grouped_specs(_rng(seed, 0), num_videos)
        attrs = _per_group(groups, changed)
    else:
        specs, groups, attrs = _grouped_specs(_rng(seed, 0), num_videos)
    cap_rng, split_rng = _rng(seed, 1), _rng(seed, 2)
    ids = [f"video{i}" for i in range(num_videos)]
    fractions = [0.6513, 0.0497, 0.2990]
    # compositional: a target and its distractors always share a split (train, validate, test, 1k-A/B test)
    sizes = _group_split_sizes(groups, fractions) if compositional else split_sizes(num_videos, fractions)
    n_train, n_val, n_test = sizes
    full = ["train"] * n_train + ["validate"] * n_val + ["test"] * n_test
    test_full = list(range(n_train + n_val, num_videos))
    n_1k = min(n_test, max(1, round(num_videos * 0.1))) if n_test else 0
    test_a = _pick_by_groups(test_full, groups, n_1k, split_rng, whole=compositional)
    test_b = _pick_by_groups(test_full, groups, n_1k, split_rng, whole=compositional)
    d = float(cfg.duration_s)
    if compositional:
        captions = [comp.make_captions(s, cap_rng, cfg.captions_per_video, cfg.object_words) for s in specs]
    else:
        captions = [make_captions(s, cap_rng, cfg.captions_per_video) for s in specs]
    data = _msrvtt_json(ids, groups, full, captions, d)
    in_a, in_b = set(test_a), set(test_b)
    jsfusion = [
        [f"ret{k}", f"msr{i}", ids[i], captions[i][int(split_rng.integers(len(captions[i])))]]
        for k, i in enumerate(test_a)
    ]
    train_9k = [v for i, v in enumerate(ids) if i not in in_a]
    train_7k = ids[: n_train + n_val]
    files = {
        "MSRVTT_data.json": json.dumps(data),
        "MSRVTT_train.9k.csv": _csv(["video_id"], [[v] for v in train_9k]),
        "MSRVTT_train.7k.csv": _csv(["video_id"], [[v] for v in train_7k]),
        "MSRVTT_JSFUSION_test.csv": _csv(["key", "vid_key", "video_id", "sentence"], jsfusion),
        "train_list_miech.txt": _lines([v for i, v in enumerate(ids) if i not in in_b]),
        "test_list_miech.txt": _lines([ids[i] for i in test_b]),
        "train_list_full.txt": _lines(ids[:n_train]),
        "val_list_full.txt": _lines(ids[n_train : n_train + n_val]),
        "test_list_full.txt": _lines(ids[n_train + n_val :]),
    }
    paths = [f"videos/all/{v}.mp4" for v in ids]
    jobs, videos = _single_clips(ids, paths, full, specs, groups, attrs, cfg, seed)
    if compositional:  # "" for a group's target, else the one binding this distractor changes
        for v, c in zip(ids, changed):
            videos[v]["changed_binding"] = c
    splits = {
        "full/train": n_train,
        "full/validate": n_val,
        "full/test": n_test,
        "1k-A/train": len(train_9k),
        "1k-A/test": len(test_a),
        "1k-B/train": num_videos - len(test_b),
        "1k-B/test": len(test_b),
        "7k/train": len(train_7k),
    }
    return Plan(jobs, files, splits, len(data["sentences"]), videos)


def _sentence(spec: ClipSpec, rng: np.random.Generator) -> str:
    c = caption(spec, rng)
    return c[0].upper() + c[1:] + "."


def _fmt_time(t: float) -> str:
    ms = round(t * 1000)
    return f"{ms // 3600000:02d}.{ms // 60000 % 60:02d}.{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def plan_lsmdc(num_videos: int, seed: int, cfg: SynthConfig) -> Plan:
    """LSMDC: ``<movie>/<clip_id>.mp4`` and three tab-separated 6-column annotation files."""
    specs, groups, attrs = _grouped_specs(_rng(seed, 0), num_videos)
    cap_rng, time_rng = _rng(seed, 1), _rng(seed, 2)
    sizes = split_sizes(num_videos, [0.832, 0.068, 0.1])
    names = ["LSMDC16_annos_training.csv", "LSMDC16_annos_val.csv", "LSMDC16_challenge_1000_publictect.csv"]
    split_names = ["train", "val", "test"]
    d = float(cfg.duration_s)
    ids, rows, paths, split_of = [], {n: [] for n in names}, [], []
    movie = 0
    for si, size in enumerate(sizes):
        for start in range(0, size, MOVIE_SIZE):  # movies never straddle two splits
            movie += 1
            name, t = f"{movie:04d}_Shapes_Movie", 1.0 + float(time_rng.uniform(0, 60))
            for _ in range(min(MOVIE_SIZE, size - start)):
                a, b = _fmt_time(t), _fmt_time(t + d)
                clip_id = f"{name}_{a}-{b}"
                rows[names[si]].append([clip_id, a, b, a, b, _sentence(specs[len(ids)], cap_rng)])
                ids.append(clip_id)
                paths.append(f"{name}/{clip_id}.mp4")
                split_of.append(split_names[si])
                t += d + float(time_rng.uniform(0.5, 5.0))
    jobs, videos = _single_clips(ids, paths, split_of, specs, groups, attrs, cfg, seed)
    files = {n: _csv(None, r, delimiter="\t") for n, r in rows.items()}
    return Plan(jobs, files, dict(zip(split_names, sizes)), num_videos, videos)


def _event_times(rng: np.random.Generator, duration: float) -> list[tuple[float, float]]:
    k = int(rng.integers(2, 4))  # 2 or 3 events, contiguous, covering the clip
    cuts = np.cumsum(rng.uniform(0.7, 1.3, k))
    ends = [round(float(c / cuts[-1] * duration), 2) for c in cuts]
    ends[-1] = duration
    starts = [0.0] + ends[:-1]
    return list(zip(starts, ends))


def plan_activitynet(num_videos: int, seed: int, cfg: SynthConfig) -> Plan:
    """ActivityNet Captions: ``videos/v_<id>.mp4`` and ``train.json``/``val_1.json``/``val_2.json``.

    Clips are ``ACTIVITYNET_SCALE`` times longer, with 2-3 timestamped events (one sentence each);
    videos of a group differ in one attribute of one event. ``val_2`` annotates the ``val_1`` videos
    with the same timestamps and other paraphrases (as the real val_2 re-annotates val_1's videos).
    """
    rng, cap_rng = _rng(seed, 0), _rng(seed, 1)
    d = round(float(cfg.duration_s) * ACTIVITYNET_SCALE, 3)
    n_train, n_val = split_sizes(num_videos, [0.6706, 0.3294])
    events: list[list[tuple[ClipSpec, float, float]]] = []
    groups, attrs, varied_event = [], [], []
    while len(events) < num_videos:
        times = _event_times(rng, d)
        base = [sample_spec(rng) for _ in times]
        j = int(rng.integers(len(times)))
        attr, variants = sample_group(rng, base[j], GROUP_SIZE)
        for var in variants[: num_videos - len(events)]:
            specs = base[:j] + [var] + base[j + 1 :]
            events.append([(s, a, b) for s, (a, b) in zip(specs, times)])
            groups.append(len(attrs))
            varied_event.append(j)
        attrs.append(f"event{j}.{attr}")
    width = max(5, len(str(num_videos - 1)))
    ids = [f"v_shapes{i:0{width}d}" for i in range(num_videos)]
    annos: dict[str, dict] = {"train.json": {}, "val_1.json": {}, "val_2.json": {}}
    jobs, videos, negs = [], {}, _negatives(ids, groups)
    for i, (v, ev) in enumerate(zip(ids, events)):
        entry = {
            "duration": d,
            "timestamps": [[a, b] for _, a, b in ev],
            "sentences": [_sentence(s, cap_rng) for s, _, _ in ev],
        }
        targets = ["train.json"] if i < n_train else ["val_1.json", "val_2.json"]
        for t in targets:
            annos[t][v] = (
                entry
                if t != "val_2.json"
                else {**entry, "sentences": [_sentence(s, cap_rng) for s, _, _ in ev]}
            )
        path = f"videos/{v}.mp4"
        jobs.append(_job(path, ev, d, cfg, _clip_seed(seed, i)))
        videos[v] = {
            "path": path,
            "split": "train" if i < n_train else "val",
            "group": groups[i],
            "varied_attribute": attrs[groups[i]],
            "hard_negatives": negs[i],
            "events": [{"timestamp": [a, b], "attributes": s.attributes()} for s, a, b in ev],
        }
    files = {k: json.dumps(v) for k, v in annos.items()}
    n_caps = sum(len(e["sentences"]) for a in annos.values() for e in a.values())
    return Plan(jobs, files, {"train": n_train, "val_1": n_val, "val_2": n_val}, n_caps, videos)


LAYOUTS: dict[str, Callable[[int, int, SynthConfig], Plan]] = {
    "msrvtt": plan_msrvtt,
    "activitynet": plan_activitynet,
    "lsmdc": plan_lsmdc,
}
