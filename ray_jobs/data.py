"""Ray Data pipeline: record index -> decode clips (PyAV) -> audio features -> model-ready batches.

Captions are tokenized once in the driver (they are small) and travel with the index rows, so workers
need no tokenizer. The decode stage runs as Ray tasks with a fractional CPU each, sized so that the Data
stage and the Train workers share a small machine without starving each other (see docs/platform.md).

A clip that fails to decode is not dropped here: it flows on with ``ok = False`` and zeroed arrays, so
the training worker can count it, name it and decide (``data.max_skip_fraction``) whether to abort.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict

import numpy as np
import ray.data
from ray.data import TaskPoolStrategy
from ray.data.block import BlockAccessor

from etva.config import DataConfig, RayConfig
from etva.data.example import decode_batch, feature_stores_for_path
from etva.data.records import ClipRecord
from ray_jobs.cache import cached

logger = logging.getLogger(__name__)

__all__ = ["CaptionTable", "index_rows", "build_video_dataset", "eval_shard_name"]


class CaptionTable:
    """All captions of a split, tokenized, with the video each belongs to.

    Attributes:
        input_ids: (num_captions, L) int64
        attention_mask: (num_captions, L) int64
        video_index: (num_captions,) int64, index into the split's record list
        first: (num_videos,) int64, index of each video's first caption
        count: (num_videos,) int64, number of captions of each video
    """

    def __init__(self, records: list[ClipRecord], tokenize_fn, max_len: int):
        texts = [c for r in records for c in r.captions]
        counts = np.array([len(r.captions) for r in records], dtype=np.int64)
        if (counts == 0).any():
            bad = [records[i].video_id for i in np.flatnonzero(counts == 0)[:5]]
            raise ValueError(f"videos without captions reached the pipeline: {bad}")
        self.input_ids, self.attention_mask = tokenize_fn(texts, max_len)
        self.video_index = np.repeat(np.arange(len(records), dtype=np.int64), counts)
        self.count = counts
        self.first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)

    def __len__(self) -> int:
        return len(self.video_index)

    def per_video(self, max_captions: int) -> np.ndarray:
        """(num_videos, C, L) token ids of up to ``max_captions`` captions per video (0-padded)."""
        num_videos, L = len(self.count), self.input_ids.shape[1]
        out = np.zeros((num_videos, max_captions, L), dtype=np.int64)
        for v in range(num_videos):
            n = min(int(self.count[v]), max_captions)
            out[v, :n] = self.input_ids[self.first[v] : self.first[v] + n]
        return out


def index_rows(
    records: list[ClipRecord], captions: CaptionTable | None, max_captions: int = 32
) -> list[dict]:
    """One index row per video: id (the feature store's key), path, clip bounds, its index in the split,
    and (for training) its caption ids."""
    per_video = captions.per_video(max_captions) if captions is not None else None
    rows = []
    for i, r in enumerate(records):
        row = {
            "video_id": r.video_id,
            "video_path": r.video_path,
            "start_s": float("nan") if r.start_s is None else float(r.start_s),
            "end_s": float("nan") if r.end_s is None else float(r.end_s),
            "video_index": i,
        }
        if per_video is not None:
            row["caption_ids"] = per_video[i]
            row["caption_first"] = int(captions.first[i])
            row["caption_count"] = min(int(captions.count[i]), max_captions)
        rows.append(row)
    return rows


def decode_stage(batch: dict[str, np.ndarray], data_cfg: dict) -> dict[str, np.ndarray]:
    """Map-batches function: decode a batch of index rows into model inputs (plain numpy)."""
    cfg = DataConfig(**{k: v for k, v in data_cfg.items() if k != "synth"})
    out = decode_batch(batch, cfg)
    for name in ("video_index", "caption_ids", "caption_first", "caption_count"):
        if name in batch:
            out[name] = np.asarray(batch[name])
    out.pop("error", None)  # decode_batch has logged each failed clip once
    # only numeric columns go on (strings cannot become tensors); workers report skips by video_index
    return {k: v for k, v in out.items() if np.asarray(v).dtype.kind in "biuf"}


def build_video_dataset(
    records: list[ClipRecord],
    data_cfg: DataConfig,
    ray_cfg: RayConfig,
    *,
    captions: CaptionTable | None = None,
    shuffle: bool = False,
    seed: int = 0,
    shard: tuple[int, int] | None = None,
    storage: str = "",
    name: str = "",
    groups: list[int] | None = None,
    group_batch: int = 32,
):
    """A Ray Dataset of decoded clips, one row per video.

    Args:
        records: the split's records (row ``video_index`` = position in this list).
        captions: for training, the tokenized captions; each row carries its video's caption ids so the
            worker samples one per video per epoch.
        shuffle: for training: the index rows are permuted once (``seed``), so blocks are random sets of
            videos, and the block order changes every epoch; rows mix further in the worker's local
            shuffle buffer (``ray_jobs.batches.train_batches``).
        shard: ``(rank, world)``: only the videos with ``video_index % world == rank`` (evaluation
            shards: every video in exactly one shard, none dropped).
        storage, name: where ``data.cache=disk`` keeps decoded shards, and the dataset's name in logs.
        groups, group_batch: for training with ``train.group_batches``: each record's group id (a target
            and its distractors), and the batch size. Each block is then one batch of whole groups, at most
            ``group_batch`` rows (:func:`group_blocks`), and the worker takes one block per batch.
    """
    rows = index_rows(records, captions)
    if shard is not None:
        rank, world = shard
        rows = rows[rank::world]
    if shuffle and groups is None:  # each block a random set of videos, not a run of neighbours
        rows = [rows[i] for i in np.random.default_rng(seed).permutation(len(rows))]
    ds, batch_size = _index_dataset(rows, data_cfg, ray_cfg, shuffle, seed, groups, group_batch)
    streaming = data_cfg.cache == "none"
    if shuffle and streaming:
        # a new block order every epoch (re-executed); rows mix in the worker's local shuffle buffer
        # (ray_jobs.batches). Not random_shuffle(): its all-to-all stage holds back every decode task
        # until it finishes (docs/platform.md; benchmarks/RESULTS.md "Where an epoch's time goes")
        ds = ds.randomize_block_order()
    decoded = ds.map_batches(
        decode_stage,
        fn_kwargs={"data_cfg": asdict(data_cfg)},
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=ray_cfg.decode_cpus,
        compute=TaskPoolStrategy(size=max(1, ray_cfg.decode_concurrency)),
    )
    if streaming:
        return decoded
    decoded = cached(decoded, rows, data_cfg, storage, name)
    return decoded.randomize_block_order() if shuffle else decoded


def _index_dataset(rows, data_cfg: DataConfig, ray_cfg: RayConfig, shuffle, seed, groups, group_batch):
    """The index rows as a Ray Dataset cut into blocks, and the decode stage's batch size (None: a block)."""
    if groups is not None:
        if not shuffle or (data_cfg.feature_store and not data_cfg.decode_clips):
            raise ValueError("train.group_batches: whole-group blocks are for a decoded training split only")
        return ray.data.from_arrow(_blocks(group_blocks(rows, groups, seed, group_batch))), None
    if data_cfg.feature_store and not data_cfg.decode_clips:
        # store only: blocks of whole row groups (random ones from many shards when training), so each
        # task reads each row group it needs once per epoch and holds one block, never the store
        return ray.data.from_arrow(_blocks(_store_groups(rows, data_cfg.feature_store, shuffle, seed))), None
    blocks = _num_blocks(len(rows), ray_cfg.decode_concurrency)
    return ray.data.from_items(rows, override_num_blocks=blocks), 8


STORE_BLOCK_ROWS = 256  # rows per block on the store path (one read task; 19 MB of float16 at MSRVTT size)


def _store_groups(rows: list[dict], feature_store: str, shuffle: bool, seed: int) -> list[list[dict]]:
    """The rows packed into blocks of whole row-group chunks of the first expert's store
    (:data:`etva.data.feature_store.ROW_GROUP_CLIPS` clips each, so a read task reads whole row groups).

    Training (``shuffle``): the chunks are permuted before packing, so a block gathers chunks from many
    shards (a shard holds neighbouring clips: one movie, one source), and its rows are mixed, so a batch
    is not a run of neighbours. Evaluation: chunks in file order. Videos that store lacks form blocks of
    their own (other experts may have them)."""
    stores = feature_stores_for_path(feature_store)
    where = stores[sorted(stores)[0]].chunk_map()
    chunks: dict[tuple, list[dict]] = {}
    lacking = []
    for row in rows:
        key = where.get(row["video_id"])
        (lacking if key is None else chunks.setdefault(key, [])).append(row)
    order = sorted(chunks)
    rng = np.random.default_rng(seed)
    if shuffle:
        order = [order[i] for i in rng.permutation(len(order))]
    out = _pack([chunks[key] for key in order], STORE_BLOCK_ROWS)
    if shuffle:  # rows mixed within a block, so that each batch spans its chunks (reads are per shard anyway)
        out = [[block[i] for i in rng.permutation(len(block))] for block in out]
    return out + [lacking[s : s + 64] for s in range(0, len(lacking), 64)]


def group_blocks(rows: list[dict], groups: list[int], seed: int, max_rows: int) -> list[list[dict]]:
    """The rows in blocks of whole groups (``groups[i]`` is row ``i``'s group), at most ``max_rows`` each
    (a larger group is a block of its own), the groups in a random order (``seed``). With one block per
    batch (``train.group_batches``, :func:`ray_jobs.batches.train_rows`), a target meets its distractors as
    negatives in the contrastive loss (hard negatives; a random batch of 32 out of 800 videos holds a given
    distractor one time in 25)."""
    if len(groups) != len(rows):
        raise ValueError(f"group_blocks: {len(groups)} group ids for {len(rows)} rows")
    members: dict[int, list[dict]] = {}
    for row, g in zip(rows, groups):
        members.setdefault(int(g), []).append(row)
    order = sorted(members)
    return _pack(
        [members[order[int(i)]] for i in np.random.default_rng(seed).permutation(len(order))], max_rows
    )


def _pack(parts: list[list[dict]], max_rows: int) -> list[list[dict]]:
    """``parts`` in order, packed whole into blocks of at most ``max_rows`` rows (a larger part alone)."""
    out: list[list[dict]] = []
    for part in parts:
        if not out or (out[-1] and len(out[-1]) + len(part) > max_rows):
            out.append([])
        out[-1].extend(part)
    return out


def _blocks(groups: list[list[dict]]) -> list:
    """One Arrow block per group of index rows (the unit a read task and the shuffle work on)."""
    return [
        BlockAccessor.batch_to_block({k: np.stack([np.asarray(r[k]) for r in g]) for k in g[0]})
        for g in groups
    ]


def eval_shard_name(split: str, rank: int) -> str:
    """The Train dataset name of ``rank``'s shard of an evaluation split (one dataset per rank)."""
    return f"{split}_shard{rank}"


def _num_blocks(n: int, concurrency: int) -> int:
    """About 16 rows per block (a block is one decode task and the unit the training set is shuffled
    in), and at least one block per decode task, so that a small split still decodes in parallel."""
    return max(1, min(n, max(concurrency, min(2000, math.ceil(n / 16)))))
