"""The real-data path exactly as the README's "Pretrained weights" section runs it, against the suite's
local Ray head and MLflow server: a dataset in the MSRVTT layout, the three experts' weights in local
folders (tiny random encoders saved with ``save_pretrained``), then

    etva extract --config ray_jobs/configs/msrvtt_1k_a_features.yaml data.root=...   (submitted)
    (the video folder moved away)
    etva train   --config ray_jobs/configs/msrvtt_1k_a_features.yaml data.root=...   (submitted)
    etva best --experiment ... --model-name ...
    etva eval --checkpoint models:/...@champion --split test                          (submitted)
    mlflow.pyfunc.load_model("models:/...@champion").predict(captions x store ids)
    etva search "..." --model models:/...@champion --store STORE

and the same store path for a second layout (ActivityNet Captions, `activitynet_features.yaml`).

The shipped config is used as it is, plus overrides that only shrink it to this machine (tiny model,
CPU workers, the encoders' folders): selection stays on videos held out of train (``val_from_train``),
the test split is reported. No video file exists while training and evaluating, so every scored video
came from the store."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest

from etva.data import load_records
from etva.data.feature_store import open_stores
from tests.integration.test_cli_e2e import _ok, etva
from tests.integration.tiny_encoders import encoder_overrides, save_tiny_encoders

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]  # ~20 min at load 70 on 2 cores
CONFIG = "ray_jobs/configs/msrvtt_1k_a_features.yaml"
ANET = "ray_jobs/configs/activitynet_features.yaml"
EXPERIMENT = "etva-user-path"
HELD_OUT = 4

# shrink the shipped GPU config to a 2-core CPU machine; nothing here changes the path it takes
SMALL = [
    "data.tokenizer_path=", "data.vocab_size=200", "data.max_text_len=16", "data.max_feature_tokens=4",
    "model.text.preset=tiny", "model.text.pretrained_path=", "model.text.hidden_size=32",
    "model.text.embedding_size=16", "model.text.num_layers=1", "model.text.num_heads=2",
    "model.text.intermediate_size=64", "model.text.max_position=32",
    "model.d=32", "model.num_clusters=4", "model.fusion_layers=1", "model.fusion_heads=2",
    "train.precision=fp32", "train.epochs=1", "train.batch_size=4", "train.eval_batch_size=16",
    "optim.warmup_steps=2", f"data.val_from_train={HELD_OUT}",
    "ray.use_gpu=false", "ray.num_workers=2", "ray.cpus_per_worker=0.5", "ray.decode_cpus=0.25",
    "ray.decode_concurrency=2",
    "extract.num_frames=4", "extract.frame_size=32", "extract.max_audio_s=1.0", "extract.batch_size=4",
    "extract.shard_size=8", "extract.num_actors=1", "extract.cpus_per_actor=0.5", "extract.decode_cpus=0.5",
    "extract.decode_concurrency=2",
]  # fmt: skip


def test_readme_real_data_path(local_cluster, tmp_path):
    root, store, models = tmp_path / "msrvtt", tmp_path / "store", save_tiny_encoders(tmp_path / "models")
    _ok(etva(local_cluster, "data", "synth", "--out", str(root), "--num-videos", "24", "--duration", "1",
             "--width", "64", "--height", "48", "--captions-per-video", "3", "--no-progress"))  # fmt: skip
    test_ids = [r.video_id for r in load_records("msrvtt", root, "test", "1k-A")]
    overrides = [
        f"data.root={root}", *SMALL, *encoder_overrides(models, with_dims=True),
        f"data.feature_store={store}", f"extract.output_dir={store}",
        f"ray.storage_path={tmp_path / 'runs'}", f"mlflow.experiment={EXPERIMENT}",
    ]  # fmt: skip

    _ok(etva(local_cluster, "extract", "--config", CONFIG, *overrides))
    stores = open_stores(store)
    assert sorted(stores) == ["appearance", "audio", "motion"]
    assert all(set(test_ids) <= s.ids() for s in stores.values())

    shutil.move(root / "videos", tmp_path / "videos-elsewhere")  # training must not need them
    out = _ok(etva(local_cluster, "train", "--config", CONFIG, "--run-name", "user-path", *overrides))
    assert f"checkpoint selected on {HELD_OUT} videos held out of 'train'" in out
    assert "NOTE: selected on the test split" not in out
    header = re.search(r"split 'test': (\d+) queries x (\d+) videos scored", out)
    assert header and int(header.group(2)) == len(test_ids), out[-3000:]
    assert "not scored" not in out

    _ok(etva(local_cluster, "best", "--experiment", EXPERIMENT, "--model-name", EXPERIMENT))
    ev = _ok(etva(local_cluster, "eval", "--checkpoint", f"models:/{EXPERIMENT}@champion", "--split", "test"))
    header = re.search(r"split 'test': (\d+) queries x (\d+) videos scored", ev)
    assert header and int(header.group(2)) == len(test_ids), ev[-3000:]
    assert "not scored" not in ev

    import mlflow.pyfunc

    mlflow.set_tracking_uri(local_cluster.mlflow_uri)
    model = mlflow.pyfunc.load_model(f"models:/{EXPERIMENT}@champion")
    frame = pd.DataFrame({"text": ["a red circle"] * len(test_ids), "video_id": test_ids})
    scored = model.predict(frame, params={"feature_store": str(store)})
    assert len(scored) == len(test_ids) and np.isfinite(scored["score"]).all(), scored
    assert (scored["error"] == "").all()

    # etva search over the store with the champion (the index is built from features, no video exists)
    hits_file = tmp_path / "hits.json"
    found = _ok(etva(local_cluster, "search", "a red circle", "--model", f"models:/{EXPERIMENT}@champion",
                     "--store", str(store), "--index", str(tmp_path / "index"), "--top-k", "3",
                     "--json", str(hits_file), "--no-progress"))  # fmt: skip
    in_store = set().union(*(s.ids() for s in stores.values()))
    assert f"{len(in_store)} encoded" in found, found[-3000:]
    (hits,) = json.loads(hits_file.read_text())
    assert len(hits["hits"]) == 3 and {h["key"] for h in hits["hits"]} <= in_store, hits


def test_second_layout_activitynet(local_cluster, tmp_path):
    """The same path for ActivityNet Captions (its JSON layout, `v_<id>` videos, paragraph captions):
    extract with the shipped ActivityNet features config, videos moved away, train selecting on val_2 and
    reporting every val_1 video from the store."""
    root, store, models = tmp_path / "anet", tmp_path / "store", save_tiny_encoders(tmp_path / "models")
    _ok(etva(local_cluster, "data", "synth", "--format", "activitynet", "--out", str(root), "--num-videos",
             "16", "--duration", "1", "--width", "64", "--height", "48", "--captions-per-video", "2",
             "--no-progress"))  # fmt: skip
    val_1 = [r.video_id for r in load_records("activitynet", root, "val_1")]
    overrides = [
        f"data.root={root}", *[o for o in SMALL if not o.startswith(("data.val_from_train", "ray.num_workers"))],
        "ray.num_workers=1", *encoder_overrides(models, with_dims=True), "data.max_text_len=32",
        f"data.feature_store={store}", f"extract.output_dir={store}",
        f"ray.storage_path={tmp_path / 'runs'}", f"mlflow.experiment={EXPERIMENT}-anet",
    ]  # fmt: skip
    _ok(etva(local_cluster, "extract", "--config", ANET, *overrides))
    assert all(set(val_1) <= s.ids() for s in open_stores(store).values())
    videos = [p for p in root.rglob("*") if p.suffix in (".mp4", ".mkv", ".webm")]
    for video in videos:  # training must not need them
        video.rename(tmp_path / video.name)
    out = _ok(etva(local_cluster, "train", "--config", ANET, "--run-name", "user-path-anet", *overrides))
    assert "checkpoint selected on 'val_2'" in out and "NOTE: selected on the test split" not in out
    header = re.search(r"split 'val_1': (\d+) queries x (\d+) videos scored", out)
    assert header and int(header.group(2)) == len(val_1), out[-3000:]
    assert "not scored" not in out
