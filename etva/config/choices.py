"""The choice types of the configuration (``Literal`` fields) and their accepted other spellings.

A value outside a field's ``Literal`` is refused at load time, naming the key, the value and the choices
(``etva.config.schema``). Re-exported by :mod:`etva.config`.
"""

from __future__ import annotations

from typing import Any, Literal

__all__ = ["Dataset", "MsrvttSubset", "TextPreset", "ExpertKind", "VladMode", "Alignment", "LossKind", "TuneSearch", "TuneScheduler", "DecodeCache", "Encoder", "FeatureDtype", "Precision", "Reweight", "SynthMode", "ObjectWords", "CHOICE_ALIASES"]

# choice fields: a value outside the Literal is refused at load time, naming key, value and choices
Dataset = Literal["msrvtt", "activitynet", "lsmdc"]
MsrvttSubset = Literal["1k-A", "1k-B", "full", "7k"]
TextPreset = Literal["tiny", "albert-base-v2"]
ExpertKind = Literal["appearance", "motion", "audio", "features", "pretrained"]
VladMode = Literal["shared", "separate", "text"]
Alignment = Literal["global", "local", "both"]
LossKind = Literal["infonce", "margin"]
TuneSearch = Literal["random", "grid", "optuna"]
TuneScheduler = Literal["asha", "fifo"]
DecodeCache = Literal["none", "memory", "disk"]
Encoder = Literal["", "clip", "videomae", "ast"]
FeatureDtype = Literal["float32", "float16"]
Precision = Literal["fp32", "bf16", "fp16"]  # train.precision: autocast dtype (etva.train.precision)
Reweight = Literal["none", "inverted_softmax", "dsl"]  # eval.reweight (etva.eval.reweight)
SynthMode = Literal["shapes", "compositional"]  # data.synth.mode (docs/study.md)
# data.synth.object_words: how compositional captions name an object (docs/study.md, "Object words")
ObjectWords = Literal["phrase", "fused"]

# other accepted spellings (matched case-insensitively), stored as the canonical choice; the MSRVTT
# ones are those of ``etva.data.sources.msrvtt`` (a unit test keeps the two in step)
CHOICE_ALIASES: dict[Any, dict[str, str]] = {
    MsrvttSubset: {"1ka": "1k-A", "jsfusion": "1k-A", "9k": "1k-A", "1kb": "1k-B", "miech": "1k-B"},
}
