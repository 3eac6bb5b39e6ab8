"""Offline feature extraction: frozen encoders over clips, written as feature-store shards (extractor)."""
