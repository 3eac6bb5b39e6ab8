"""The tokenizer is trained once per set of training captions and shared by key (runs, sweep trials,
resumed and later sweeps): counted by where each run's tokenizer came from and the cache's folders."""

from __future__ import annotations

from dataclasses import replace

from etva.config import DataConfig
from etva.data.records import ClipRecord
from ray_jobs.prepare import TOKENIZER_CACHE, prepare_tokenizer, tokenizer_files


def _records(n: int = 120, word: str = "circle") -> list[ClipRecord]:
    colours = ["red", "green", "blue", "yellow", "purple"]
    moves = ["moves left", "slides right", "rises up", "falls down"]
    return [
        ClipRecord(f"video{i}", f"/nowhere/video{i}.mp4", [f"a {colours[i % 5]} {word} {moves[i % 4]}"], "train")
        for i in range(n)
    ]


def test_the_second_run_on_the_same_captions_trains_no_tokenizer(tmp_path):
    data = DataConfig(vocab_size=60)
    tok1, origin1 = prepare_tokenizer(data, _records(), tmp_path / "run1", str(tmp_path))
    tok2, origin2 = prepare_tokenizer(data, _records(), tmp_path / "run2", str(tmp_path))
    assert (origin1, origin2) == ("trained", "shared")
    assert tokenizer_files(tmp_path / "run1") == tokenizer_files(tmp_path / "run2")
    assert len(list((tmp_path / TOKENIZER_CACHE).iterdir())) == 1
    assert tok1("a red circle")["input_ids"] == tok2("a red circle")["input_ids"]
    _, origin3 = prepare_tokenizer(data, _records(), tmp_path / "run2", str(tmp_path))
    assert origin3 == "resumed"  # the run's own folder first (a resumed run keeps its tokenizer)


def test_other_captions_or_vocabulary_train_a_new_one(tmp_path):
    data = DataConfig(vocab_size=60)
    prepare_tokenizer(data, _records(), tmp_path / "a", str(tmp_path))
    _, origin_b = prepare_tokenizer(data, _records(word="square"), tmp_path / "b", str(tmp_path))
    _, origin_c = prepare_tokenizer(replace(data, vocab_size=70), _records(), tmp_path / "c", str(tmp_path))
    assert (origin_b, origin_c) == ("trained", "trained")
    folders = list((tmp_path / TOKENIZER_CACHE).iterdir())
    assert len(folders) == 3 and not [p for p in folders if p.name.startswith(".")]


def test_no_cache_root_shares_nothing(tmp_path):
    _, origin = prepare_tokenizer(DataConfig(vocab_size=60), _records(), tmp_path / "run", "")
    assert origin == "trained" and not (tmp_path / TOKENIZER_CACHE).exists()
