"""Data: records from real annotation formats, clip decoding, audio features, tokenizer.

Light imports only: decoding (PyAV), audio features and the tokenizer (transformers) live in their own
modules (``etva.data.decode``, ``etva.data.audio``, ``etva.data.tokenizer``, ``etva.data.example``).
"""

from etva.data.records import AnnotationError, ClipRecord, LoadSummary
from etva.data.sources import SOURCES, load_feature_manifest, load_records, load_split

__all__ = [
    "AnnotationError",
    "ClipRecord",
    "LoadSummary",
    "SOURCES",
    "load_records",
    "load_split",
    "load_feature_manifest",
]
