"""The training loop as Ray Train's controller sees it: the entry point it unpickles (its inputs,
LoopInputs, are config.py's). The loop's own imports (the model, the scorer, the plots: seconds
of CPU) stay out of the controller; each worker imports them when its loop starts (loop.py)."""
from __future__ import annotations

from typing import Any


def train_loop(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker (loop_config: {"inputs": config.LoopInputs})."""
    from .loop import run_loop  # the workers' imports, not the controller's

    quiet_report_lines()
    run_loop(loop_config["inputs"])


def quiet_report_lines() -> None:
    """Ray Train logs each report with its whole metrics dict, on every rank, every epoch; the
    run's own epoch line says the same (pipeline/training/loop.py). Its logger is named by file."""
    import logging

    from ray.train.v2._internal.execution import context

    logging.getLogger(context.__file__).setLevel(logging.WARNING)
