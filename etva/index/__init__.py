"""The video index of a trained model: exact score decomposition, Parquet store, vector search."""
