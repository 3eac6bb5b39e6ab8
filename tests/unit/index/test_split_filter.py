"""The split filter of an index built from a feature store: each store video's group is its split in the
model's own dataset (the checkpoint's data config, read with the dataset's annotation loader).

A tiny untrained checkpoint whose experts read a Parquet feature store (decode_clips=false), over the
generated shapes benchmark (MSRVTT 1k-A layout: train and test). The store holds every benchmark video
plus two ids no annotation lists. The index is built in-process with the library code the Ray Data job
runs; ``SearchService`` (behind `etva serve`) and `etva search --split` answer only that split's videos,
and every filter the index cannot answer is a clear error naming it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from fastapi import HTTPException

from etva.cli import main
from etva.config import load_config
from etva.data.feature_store import FeatureStoreWriter, register_store
from etva.data.sources import load_records
from etva.data.synth import generate_dataset
from etva.index.build import load_index_model
from etva.index.store import IndexStore, rows_table
from etva.search import SearchError, load_index, search, update_index
from ray_jobs.serve_app import SearchService
from tests.integration.tiny_checkpoint import tiny_checkpoint

REPO = Path(__file__).resolve().parents[3]
DIMS = {"appearance": 4, "audio": 3}
STRAYS = ["stray-a", "stray-b"]  # in the store, in no annotation file


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("split-filter")
    store = tmp / "store"
    synth = load_config(REPO / "ray_jobs/configs/tiny.yaml").data.synth
    generate_dataset(tmp / "shapes", 40, 0, cfg=synth, workers=1, progress=False)  # what tiny_checkpoint uses
    splits = {
        s: {r.video_id for r in load_records("msrvtt", tmp / "shapes", s, "1k-A")} for s in ("train", "test")
    }
    ids = sorted(splits["train"] | splits["test"]) + STRAYS
    rng = np.random.default_rng(0)
    for expert, dim in DIMS.items():
        have = ids if expert == "appearance" else ids[::2]  # audio missing for half: two patterns
        writer = FeatureStoreWriter(store / expert, {"expert": expert}, dim, expert=expert)
        writer.write_shard(have, [rng.standard_normal((3, dim)) for _ in have])
        register_store(store, expert, store / expert)
    ckpt, _ = tiny_checkpoint(
        tmp, "data.decode_clips=false", f"data.feature_store={store}", "model.experts.motion.enabled=false",
        *(f"model.experts.{e}.kind=features" for e in DIMS), *(f"model.experts.{e}.dim={d}" for e, d in DIMS.items()),
    )  # fmt: skip
    im = load_index_model(ckpt, "etva-x", "4", "models:/etva-x@champion")
    return {"tmp": tmp, "ckpt": ckpt, "store": store, "im": im, "splits": splits, "ids": ids}


@pytest.fixture(scope="module")
def index(built):
    where = built["tmp"] / "index"
    stats = update_index(built["im"], where, "store", built["store"], progress=False)
    assert (stats.encoded, stats.no_split) == (len(built["ids"]), len(STRAYS))
    return where


def test_store_rows_carry_their_dataset_split(built, index):
    t = IndexStore.read(index).table(["key", "group"]).to_pydict()
    group = dict(zip(t["key"], t["group"]))
    assert {k for k, g in group.items() if g == "test"} == built["splits"]["test"]
    assert {k for k, g in group.items() if g == "train"} == built["splits"]["train"]
    assert [group[s] for s in STRAYS] == ["", ""]


def test_build_logs_how_many_videos_have_no_split(built, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="etva.index.build"):
        stats = update_index(built["im"], tmp_path / "index", "store", built["store"], progress=False)
    assert stats.no_split == len(STRAYS)
    assert f"{len(STRAYS)} of {len(built['ids'])} videos are in no split of msrvtt" in caplog.text


def test_split_filter_returns_only_that_split(built, index):
    im = built["im"]
    loaded = load_index(im, index)
    assert loaded.splits() == ["test", "train"]
    for split in ("test", "train"):
        hits = search(im, loaded, ["a red circle moves left", "a blue square"], top_k=1000, split=split)
        assert all({h.key for h in row} == built["splits"][split] for row in hits)
        assert all(h.group == split and h.root == "" for row in hits for h in row)
    every = search(im, loaded, ["a red circle moves left"], top_k=1000)[0]
    best_test = next(h for h in every if h.group == "test")
    top = search(im, loaded, ["a red circle moves left"], top_k=1, split="test")[0][0]
    assert (top.key, top.score) == (best_test.key, pytest.approx(best_test.score, abs=1e-6))


def test_service_answers_the_split_and_rejects_what_the_index_cannot_filter(built, index):
    svc = SearchService({"ckpt_dir": str(built["ckpt"]), "name": "etva-x", "version": "4",
                         "uri": "models:/etva-x@champion", "index_dir": str(index)})  # fmt: skip
    got = svc.answer([svc.parse({"q": "a green triangle", "k": "100", "split": "test"})])[0]
    assert len(got["results"]) == len(built["splits"]["test"])
    assert all(h["split"] == "test" and h["folder"] is None and h["clip"] is None for h in got["results"])
    for params, message in [
        ({"split": "val"}, "split 'val': no indexed video in this split; splits present: test, train"),
        ({"folder": "sub"}, "folder 'sub': this index was built from a feature store"),
        ({"split": "test", "folder": "sub"}, "filter by one"),
    ]:
        with pytest.raises(HTTPException) as e:
            svc.parse({"q": "red", **params})
        assert e.value.status_code == 400 and message in e.value.detail
    assert svc.answer([svc.parse({"q": "red"})])[0]["results"]  # still answering


def test_mixed_index_filters_by_source_kind(built, index, tmp_path):
    """A folder source's rows never match a split, a store's never a folder, even with equal groups."""
    im, mixed = built["im"], tmp_path / "mixed"
    update_index(im, mixed, "store", built["store"], progress=False)
    store = IndexStore.read(mixed)
    t = store.table()
    folder = store.source_id("folder", tmp_path)  # rows as a folder source would hold (sub-folder 'test')
    n = 3
    vec = t.column("vector").combine_chunks().flatten().to_numpy().reshape(t.num_rows, -1)[:n]
    store.append(rows_table([f"test/c{i}.mp4" for i in range(n)], folder, [f"test/c{i}.mp4" for i in range(n)],
                            ["test"] * n, t.column("pattern").to_pylist()[:n], vec, [(1, 1)] * n))  # fmt: skip
    loaded = load_index(im, mixed)
    by_split = search(im, loaded, ["a red circle"], top_k=1000, split="test")[0]
    assert {h.key for h in by_split} == built["splits"]["test"]
    by_folder = search(im, loaded, ["a red circle"], top_k=1000, folder="test")[0]
    assert {h.key for h in by_folder} == {f"test/c{i}.mp4" for i in range(n)}
    with pytest.raises(SearchError, match="split 'val': no indexed video"):
        search(im, loaded, ["a red circle"], split="val")


def test_search_command_split_option(built, index, capsys):
    argv = ["search", "a red circle", "--model", str(built["ckpt"]), "--index", str(index), "--top-k", "100"]
    assert main([*argv, "--split", "test"]) == 0
    shown = {line.split()[-1] for line in capsys.readouterr().out.splitlines()[2:] if line.strip()}
    assert shown == built["splits"]["test"]
    assert main([*argv, "--split", "val"]) == 2
    assert (
        "split 'val': no indexed video in this split; splits present: test, train" in capsys.readouterr().err
    )
