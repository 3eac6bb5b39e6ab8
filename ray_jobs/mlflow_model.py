"""An ETVA checkpoint as an MLflow pyfunc model ("model from code": this file is the model's code).

``ray_jobs.tracking.log_best_model`` logs it with ``python_model=<this file>`` and the weights-only
checkpoint folder as the artifact ``checkpoint``; nothing is pickled. MLflow runs this file when the model
is loaded, and :func:`mlflow.models.set_model` below names the model object.

Input: a pandas DataFrame (or a list of dicts) with

- ``text`` (string, required): one caption or query per row;
- ``video_path`` (string, optional): a video file on the loading machine;
- ``video_id`` (string, optional): a clip of the feature store (a model trained from features): its
  features are read from the store named by ``params={"feature_store": <store root>}`` at predict time,
  else from the model's own ``data.feature_store`` (its training config). Only the shards holding the
  ids asked for are read. A model with experts decoded from the clip also needs ``video_path``.

Output: a DataFrame with one row per input row:

- without ``video_path``/``video_id``: ``embedding``, the caption's text embedding as a flat float list
  (the per-expert unit vectors ``E*d`` followed by the local VLAD descriptors ``K*d``, whichever the model
  has);
- with either: ``score``, the model's fused retrieval similarity of the row's text and video (higher =
  better match; the score ``etva search`` ranks by), plus ``error`` naming a video that could not be read
  (its score is NaN).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

from etva.data.records import ClipRecord

TEXT_COL, VIDEO_COL, ID_COL = "text", "video_path", "video_id"
STORE_PARAM = "feature_store"  # predict(params=...): the store root for ``video_id`` rows
CHECKPOINT_ARTIFACT = "checkpoint"  # the artifacts key (and folder) holding the etva checkpoint


def as_frame(model_input: Any) -> pd.DataFrame:
    """The model input as a DataFrame with a ``text`` column (clear error otherwise)."""
    df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
    if TEXT_COL not in df.columns:
        raise ValueError(
            f"ETVA model input: expected a column '{TEXT_COL}' (and optionally '{VIDEO_COL}'), "
            f"got columns {list(df.columns)}"
        )
    return df


class ETVAModel(PythonModel):
    """Text embeddings, or text-video scores, of the checkpoint in ``artifacts['checkpoint']``."""

    def load_context(self, context) -> None:
        # lazy: torch and etva load when MLflow loads the model, not when it only reads this code file
        from etva.inference import load_trained

        self.model, self.cfg, self.tokenizer = load_trained(context.artifacts[CHECKPOINT_ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        # lazy, as in load_context: torch and etva load only when the model is used
        import torch

        from etva.inference import encode_texts

        df = as_frame(model_input)
        texts = [str(t) for t in df[TEXT_COL].tolist()]
        text = encode_texts(self.model, self.tokenizer, texts, self.cfg.data.max_text_len)  # Q rows
        if VIDEO_COL not in df.columns and ID_COL not in df.columns:
            parts = [t.flatten(1) for t in (text.experts, text.local) if t is not None]  # (Q, E*d), (Q, K*d)
            flat = torch.cat(parts, dim=1)  # (Q, E*d + K*d)
            return pd.DataFrame({"embedding": [row.tolist() for row in flat.float().cpu()]})
        with torch.no_grad():
            return self._scores(text, _records(df), self._data_cfg(params or {}))

    def _data_cfg(self, params: dict):
        """The model's data settings, its feature store replaced by ``params['feature_store']`` if given."""
        store = str(params.get(STORE_PARAM) or "")
        return replace(self.cfg.data, feature_store=store) if store else self.cfg.data

    def _scores(self, text, records: list, data_cfg) -> pd.DataFrame:
        """Row i: the fused similarity of text i and video i (NaN + error when the video cannot be read)."""
        from etva.inference import encode_records

        n = len(records)
        enc = encode_records(self.model, records, data_cfg)
        scores, errors = [float("nan")] * n, [enc.failed.get(i, "") for i in range(n)]
        if enc.video is not None:
            sim = self.model.similarity(text[enc.kept], enc.video)["fused"]  # (kept, kept)
            for row, i in enumerate(enc.kept):
                scores[i] = float(sim[row, row])
        return pd.DataFrame({"score": scores, "error": errors})


def _records(df: pd.DataFrame) -> list:
    """One ClipRecord per row: ``video_id`` (the store key) and/or ``video_path`` (a file to decode)."""
    paths = [str(p) for p in df[VIDEO_COL]] if VIDEO_COL in df.columns else [""] * len(df)
    ids = [str(v) for v in df[ID_COL]] if ID_COL in df.columns else [Path(p).stem for p in paths]
    return [ClipRecord(v, p, [], "") for v, p in zip(ids, paths, strict=True)]


set_model(ETVAModel())
