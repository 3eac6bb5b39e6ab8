"""Caption tokenizer: a local pretrained ALBERT tokenizer, or a SentencePiece model trained on the captions.

The trained model follows ALBERT's ``spiece.model`` conventions (``<pad>``=0, ``<unk>``=1, ``[CLS]``=2,
``[SEP]``=3, ``[MASK]``=4; lower-cased NFKC normalisation) so it loads through
``AlbertTokenizer.from_pretrained(dir)`` like a pretrained one. Note (transformers 5):
``AlbertTokenizer(vocab_file=...)`` silently ignores the file; always load a directory.

Training is deterministic: unigram model, one thread, no sentence sampling, a fixed random seed, and
seed pieces computed here. The seed pieces are the classic unigram initialisation (every substring of
a word of 2-16 characters, scored frequency x length): sentencepiece 0.2.3's built-in seed extraction
keeps only a few dozen candidates on a corpus of a few hundred captions, which left a character-level
vocabulary ("a red circle" -> 11 pieces) instead of words.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import tempfile
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

__all__ = [
    "SPECIAL_TOKENS",
    "normalize_caption",
    "train_tokenizer",
    "load_tokenizer",
    "build_tokenizer",
    "tokenize",
]

log = logging.getLogger(__name__)

SPECIAL_TOKENS = {"<pad>": 0, "<unk>": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
MODEL_NAME = "spiece.model"


def normalize_caption(text: str) -> str:
    """What the trained tokenizer's ids decode back to: NFKC, lower case, single spaces."""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


MAX_PIECE_LEN = 16
MAX_SEEDS = 1_000_000


def _write_seed_pieces(captions: list[str], path: Path) -> None:
    """Seed pieces for unigram training: substrings (2..16 chars) of ``▁word``, score = freq x len."""
    words = Counter(w for c in captions for w in c.split())
    scores: Counter[str] = Counter()
    for word, count in words.items():
        text = "▁" + word
        for i in range(len(text)):
            for j in range(i + 2, min(len(text), i + MAX_PIECE_LEN) + 1):
                scores[text[i:j]] += count * (j - i)
    ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_SEEDS]
    path.write_text("".join(f"{piece}\t{score}\n" for piece, score in ranked), encoding="utf-8")


def _train_bytes(captions: list[str], vocab_size: int) -> bytes:
    spm.set_random_generator_seed(0)
    model = io.BytesIO()
    with tempfile.TemporaryDirectory() as tmp:
        seeds = Path(tmp) / "seeds.tsv"
        _write_seed_pieces(captions, seeds)
        _run_trainer(spm, captions, vocab_size, model, seeds)
    return _without_temp_paths(model.getvalue())


def _without_temp_paths(model_bytes: bytes) -> bytes:
    """Clear the (temporary) seed file path the trainer records, so equal inputs give equal bytes."""
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_bytes)
    proto.trainer_spec.ClearField("seed_sentencepieces_file")
    return proto.SerializeToString(deterministic=True)


def _run_trainer(spm, captions: list[str], vocab_size: int, model: io.BytesIO, seeds: Path) -> None:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(captions),
        model_writer=model,
        model_type="unigram",
        vocab_size=vocab_size,
        hard_vocab_limit=False,  # a few hundred captions cap the vocabulary below vocab_size
        character_coverage=1.0,
        normalization_rule_name="nmt_nfkc_cf",  # NFKC + case folding (lower case)
        pad_id=0,
        unk_id=1,
        bos_id=-1,
        eos_id=-1,
        pad_piece="<pad>",
        unk_piece="<unk>",
        control_symbols=["[CLS]", "[SEP]", "[MASK]"],
        num_threads=1,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        seed_sentencepieces_file=str(seeds),
        minloglevel=2,
    )


def train_tokenizer(captions: list[str], out_dir: str | os.PathLike, vocab_size: int):
    """Train a SentencePiece unigram model on ``captions``, save it in ``out_dir``, load it as ALBERT's.

    ``out_dir`` gets ``spiece.model`` plus the tokenizer files of ``save_pretrained``.
    """
    texts = [c for c in (normalize_caption(c) for c in captions) if c]
    if not texts:
        raise ValueError("cannot train a tokenizer: no non-empty captions")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MODEL_NAME).write_bytes(_train_bytes(texts, vocab_size))
    tok = load_tokenizer(out)
    tok.save_pretrained(str(out))
    log.info("trained a SentencePiece tokenizer on %d captions: vocab %d (%s)", len(texts), len(tok), out)
    return tok


def load_tokenizer(dir_or_path: str | os.PathLike):
    """An ALBERT tokenizer from a directory (or its ``spiece.model``), local files only."""
    # lazy: transformers takes 1.4 s CPU to import (its vision/audio models 8 s), paid only when needed
    from transformers import AlbertTokenizer

    path = Path(dir_or_path)
    folder = path.parent if path.is_file() else path
    if not folder.is_dir():
        raise FileNotFoundError(f"tokenizer directory {folder} does not exist")
    tok = AlbertTokenizer.from_pretrained(str(folder), local_files_only=True)
    if tok.unk_token_id != SPECIAL_TOKENS["<unk>"] or len(tok) <= len(SPECIAL_TOKENS):
        raise ValueError(
            f"{folder}: tokenizer looks broken (vocab {len(tok)}, unk id {tok.unk_token_id}; "
            f"expected a SentencePiece vocab with <unk> = 1)"
        )
    return tok


def build_tokenizer(cfg, train_captions: list[str], out_dir: str | os.PathLike | None):
    """The tokenizer a run uses (``cfg`` is a :class:`etva.config.DataConfig`).

    ``cfg.tokenizer_path`` set: the local pretrained tokenizer (copied to ``out_dir`` when given, so the
    checkpoint is self-contained). Otherwise: an existing ``out_dir/spiece.model`` (resume) or a new
    model trained on ``train_captions`` with ``cfg.vocab_size``.
    """
    if cfg.tokenizer_path:
        tok = load_tokenizer(cfg.tokenizer_path)
        if out_dir is not None:
            _copy_pretrained(tok, Path(cfg.tokenizer_path), Path(out_dir))
        return tok
    if out_dir is None:
        raise ValueError("build_tokenizer: out_dir is required to train a tokenizer")
    if (Path(out_dir) / MODEL_NAME).exists():
        return load_tokenizer(out_dir)
    return train_tokenizer(train_captions, out_dir, cfg.vocab_size)


def _copy_pretrained(tok, source: Path, out_dir: Path) -> None:
    """Save ``tok`` to ``out_dir`` with the source's ``spiece.model`` (save_pretrained omits it)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(out_dir))
    model = (source.parent if source.is_file() else source) / MODEL_NAME
    if model.exists() and model.resolve() != (out_dir / MODEL_NAME).resolve():
        shutil.copyfile(model, out_dir / MODEL_NAME)


def tokenize(tokenizer, captions: list[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """``[CLS] caption [SEP]`` ids padded/truncated to ``max_len``.

    Returns:
        input_ids: int64 (N, L); attention_mask: int64 (N, L), L = max_len.
    """
    enc = tokenizer(
        list(captions),
        padding="max_length",
        truncation=True,
        max_length=max_len,
        return_tensors="np",
    )
    return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
