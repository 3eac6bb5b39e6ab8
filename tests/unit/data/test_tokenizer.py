"""SentencePiece tokenizer trained on captions, loaded as ALBERT's: ids, round trip, determinism, speed."""

from __future__ import annotations

import random
import time
from dataclasses import replace

import numpy as np
import pytest

from etva.config import DataConfig
from etva.data.tokenizer import (
    SPECIAL_TOKENS,
    build_tokenizer,
    load_tokenizer,
    normalize_caption,
    tokenize,
    train_tokenizer,
)


def captions(n: int = 300, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    colours = ["red", "green", "Blue", "yellow", "purple", "orange", "white", "black"]
    shapes = ["circle", "square", "triangle", "star", "diamond"]
    moves = ["moves left", "slides to the right", "rises up", "falls down", "spins", "stays still"]
    sounds = ["a high tone", "a low hum", "static noise", "silence"]
    out = []
    for _ in range(n):
        c, s, m, bg, snd = (rng.choice(x) for x in (colours, shapes, moves, colours, sounds))
        out.append(
            rng.choice(
                [
                    f"A {c} {s} {m} on a {bg} background, with {snd}.",
                    f"On a {bg} backdrop the {c} {s} {m}  while {snd} plays",
                ]
            )
        )
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import transformers  # noqa: F401  (import cost outside the timed training)

    out = tmp_path_factory.mktemp("tok")
    start = time.perf_counter()
    tok = train_tokenizer(captions(), out, vocab_size=400)
    return tok, out, time.perf_counter() - start


def test_training_is_fast_and_reports_its_vocab(trained):
    tok, out, seconds = trained
    assert seconds < 2.0
    assert (out / "spiece.model").exists() and (out / "tokenizer_config.json").exists()
    assert len(SPECIAL_TOKENS) < len(tok) <= 400


def test_special_token_ids_follow_albert(trained):
    tok, _, _ = trained
    ids = [tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id]
    assert ids == [0, 1, 2, 3, 4]
    assert tok.convert_ids_to_tokens([0, 1, 2, 3, 4]) == list(SPECIAL_TOKENS)


def test_unknown_rate_near_zero_and_round_trip(trained):
    tok, _, _ = trained
    caps = captions(300)
    ids, mask = tokenize(tok, caps, max_len=48)
    real = ids[mask.astype(bool)]
    assert (real == tok.unk_token_id).mean() < 0.01
    assert mask[:, -1].sum() == 0  # max_len leaves room: nothing truncated
    for row, cap in zip(ids[:50], caps[:50]):
        assert tok.decode(row, skip_special_tokens=True) == normalize_caption(cap)


def test_tokenize_shapes_padding_and_truncation(trained):
    tok, _, _ = trained
    ids, mask = tokenize(tok, ["a red circle", "a blue square " * 20], max_len=8)
    assert ids.shape == mask.shape == (2, 8) and ids.dtype == mask.dtype == np.int64
    assert ids[0, 0] == 2 and 3 in ids[0] and ids[0, -1] == 0 and mask[0, -1] == 0
    assert mask[1].all() and ids[1, -1] == 3  # truncated, still ends with [SEP]
    unseen = tokenize(tok, ["zebra"], 8)[0]
    assert tok.unk_token_id in unseen  # 'z' never occurs in the captions


def test_training_is_deterministic(trained, tmp_path):
    _, out, _ = trained
    train_tokenizer(captions(), tmp_path / "again", vocab_size=400)
    assert (tmp_path / "again" / "spiece.model").read_bytes() == (out / "spiece.model").read_bytes()


def test_load_from_dir_or_model_file(trained):
    tok, out, _ = trained
    caps = captions(20, seed=1)
    for source in (out, out / "spiece.model"):
        again = load_tokenizer(source)
        np.testing.assert_array_equal(tokenize(again, caps, 32)[0], tokenize(tok, caps, 32)[0])


def test_build_tokenizer_trains_reuses_or_loads_pretrained(trained, tmp_path):
    tok, out, _ = trained
    cfg = DataConfig(vocab_size=300)
    run_dir = tmp_path / "run" / "tokenizer"
    built = build_tokenizer(cfg, captions(), run_dir)
    assert (run_dir / "spiece.model").exists() and len(built) <= 300
    # resume: an existing model is loaded, not retrained on other captions
    again = build_tokenizer(cfg, ["completely different words"], run_dir)
    assert len(again) == len(built)
    # a configured local tokenizer directory wins and is copied next to the run
    pre = build_tokenizer(replace(cfg, tokenizer_path=str(out)), [], tmp_path / "copy")
    assert len(pre) == len(tok) and (tmp_path / "copy" / "spiece.model").exists()


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="no non-empty captions"):
        train_tokenizer(["  ", ""], tmp_path / "t", 100)
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "nowhere")
