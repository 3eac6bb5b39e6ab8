"""Training: the epoch loops (engine), what a run holds (state), checkpoints, mixed precision and the
losses."""
