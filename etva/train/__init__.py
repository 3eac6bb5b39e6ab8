"""Training: the epoch loops (engine), what a run holds (state), checkpoints, mixed precision, cross-rank
gathers and the losses."""
