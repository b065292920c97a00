"""The training loop as Ray Train's controller sees it: the entry point and the inputs it
unpickles. The loop's own imports (the model, the scorer, the plots: seconds of CPU) stay out
of the controller; each worker imports them when its loop starts (loop.py)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import TrainConfig
from .tracking import MlflowLog


@dataclass
class LoopInputs:
    """What fit() hands every worker."""
    config: TrainConfig
    num_classes: int
    train_images: int
    train_records: Any  # object ref of the training records
    val_records: Any  # object ref of the validation records, or None: no validation
    run_folder: str  # RUN: its progress files, TensorBoard events and curves (watch.py)
    best_checkpoint: str  # RUN/best/checkpoint.pt: the checkpoint with the best validation AP so far
    mlflow: MlflowLog | None = None  # the run's MLflow run, with --mlflow
    stuff_classes: tuple[int, ...] = ()  # the training set's stuff categories (isthing 0)


def train_loop(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker (loop_config: {"inputs": LoopInputs})."""
    from .loop import run_loop  # the workers' imports, not the controller's

    quiet_report_lines()
    run_loop(loop_config["inputs"])


def quiet_report_lines() -> None:
    """Ray Train logs each report with its whole metrics dict, on every rank, every epoch; the
    run's own epoch line says the same (pipeline/training/loop.py). Its logger is named by file."""
    import logging

    from ray.train.v2._internal.execution import context

    logging.getLogger(context.__file__).setLevel(logging.WARNING)
