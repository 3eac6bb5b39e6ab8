"""An ETVA checkpoint as an MLflow pyfunc model ("model from code": this file is the model's code).

``ray_jobs.tracking.log_best_model`` logs it with ``python_model=<this file>`` and the weights-only
checkpoint folder as the artifact ``checkpoint``; nothing is pickled. MLflow runs this file when the model
is loaded, and :func:`mlflow.models.set_model` below names the model object.

Input: a pandas DataFrame (or a list of dicts) with

- ``text`` (string, required): one caption or query per row;
- ``video_path`` (string, optional): a video file on the loading machine.

Output: a DataFrame with one row per input row:

- without ``video_path``: ``embedding``, the caption's text embedding as a flat float list (the
  per-expert unit vectors ``E*d`` followed by the local VLAD descriptors ``K*d``, whichever the model has);
- with ``video_path``: ``score``, the model's fused retrieval similarity of the row's text and video
  (higher = better match; the score ``etva search`` ranks by), plus ``error`` naming a video that could not
  be decoded (its score is NaN).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

TEXT_COL, VIDEO_COL = "text", "video_path"
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
        if VIDEO_COL not in df.columns:
            parts = [t.flatten(1) for t in (text.experts, text.local) if t is not None]  # (Q, E*d), (Q, K*d)
            flat = torch.cat(parts, dim=1)  # (Q, E*d + K*d)
            return pd.DataFrame({"embedding": [row.tolist() for row in flat.float().cpu()]})
        with torch.no_grad():
            return self._scores(text, [str(p) for p in df[VIDEO_COL].tolist()])

    def _scores(self, text, paths: list[str]) -> pd.DataFrame:
        """Row i: the fused similarity of text i and video i (NaN + error when the video cannot be read)."""
        from etva.data.records import ClipRecord  # lazy, as in load_context
        from etva.inference import encode_records

        records = [ClipRecord(Path(p).name, p, [], "") for p in paths]
        enc = encode_records(self.model, records, self.cfg.data)
        scores, errors = [float("nan")] * len(paths), [enc.failed.get(i, "") for i in range(len(paths))]
        if enc.video is not None:
            sim = self.model.similarity(text[enc.kept], enc.video)["fused"]  # (kept, kept)
            for row, i in enumerate(enc.kept):
                scores[i] = float(sim[row, row])
        return pd.DataFrame({"score": scores, "error": errors})


set_model(ETVAModel())
