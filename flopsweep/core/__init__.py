"""The base layer: errors, the job's result record, metric names, registries, the hardware table and formatting for
people. Nothing here imports torch, Hydra or MLflow."""

__version__ = "0.1.0"
