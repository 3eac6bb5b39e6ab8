"""Ray Tune sweeps over the training job (driver function per trial -> TorchTrainer), search spaces as
YAML (`tuning/spaces/`), MLflow parent/child runs, and the best-checkpoint pick (`etva best`)."""
