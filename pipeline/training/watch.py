"""What rank 0 keeps of a run for the people watching it, step by step and epoch by epoch:

    RUN/progress/epoch_NNNN.jsonl  the epoch's progress lines, then its metrics
    RUN/tensorboard/               TensorBoard's event files (events.py)
    RUN/curves.png                 losses and AP against epochs (curves.py)
    an MLflow run                  with --mlflow (tracking.py)

Everything is written from memory at set points (a progress line, an epoch's end), never per
step: a step only appends its scalars to a list.
"""
from __future__ import annotations

import json
import math
import time
from typing import Any

import storage as uris

from ..evaluation.scoring import STAT_NAMES
from .curves import draw_curves
from .events import FOLDER, REWRITE_SECONDS, EpochEvents, prune
from .tracking import MlflowLog

PROGRESS = "progress"
NOT_SCALARS = ("epoch", "steps")  # the x axes, not curves


def progress_file(run_folder: str, epoch: int) -> str:
    return uris.join(run_folder, PROGRESS, f"epoch_{epoch:04d}.jsonl")


def read_history(run_folder: str, epochs_done: int) -> list[dict[str, Any]]:
    """The metrics of the epochs done, from their progress files (an epoch whose file is missing,
    or written before the files kept metrics, is left out)."""
    history = []
    for epoch in range(1, epochs_done + 1):
        try:
            last = uris.read_bytes(progress_file(run_folder, epoch)).decode().strip().rsplit("\n", 1)[-1]
        except FileNotFoundError:
            continue
        metrics = json.loads(last).get("epoch_metrics")
        if metrics:
            history.append(metrics)
    return history


def epoch_scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """An epoch's metrics as TensorBoard tags: COCO stats (boxes, and masks as segm_*) under val/,
    the rest under epoch/."""
    return {("val/" if name.removeprefix("segm_") in STAT_NAMES else "epoch/") + name: float(value)
            for name, value in metrics.items()
            if name not in NOT_SCALARS and isinstance(value, (int, float)) and math.isfinite(value)}


class RunLog:
    """Rank 0's record of a run (see the module docstring)."""

    def __init__(self, run_folder: str, epochs_done: int, mlflow: MlflowLog | None) -> None:
        self.run_folder, self.mlflow = run_folder, mlflow
        self.name = run_folder.rstrip("/").rsplit("/", 1)[-1]
        self.tensorboard = uris.join(run_folder, FOLDER)
        prune(self.tensorboard, epochs_done)  # an epoch begun after the checkpoint is trained again
        self.history = read_history(run_folder, epochs_done)
        self.events: EpochEvents | None = None
        self.steps: list[tuple[int, float, dict[str, float]]] = []  # (step, wall time, scalars)

    def start_epoch(self, epoch: int) -> None:
        """Epoch counted from 1."""
        self.events = EpochEvents(self.tensorboard, epoch)
        self.steps = []

    def epoch_events(self) -> EpochEvents:
        if self.events is None:
            raise RuntimeError("RunLog: start_epoch comes first")
        return self.events

    def step(self, step: int, scalars: dict[str, float]) -> None:
        entry = (step, time.time(), {f"train/{name}": value for name, value in scalars.items()})
        self.steps.append(entry)
        self.epoch_events().add(*entry)

    def flush(self) -> None:
        """At a progress line: the epoch so far to TensorBoard, at most once a minute."""
        self.epoch_events().write(at_least_every=REWRITE_SECONDS)

    def end_epoch(self, metrics: dict[str, Any], lines: list[dict[str, Any]]) -> None:
        """The epoch's progress file, its metrics to TensorBoard and MLflow, and the curves."""
        epoch, step = metrics["epoch"], metrics["steps"]
        text = "".join(json.dumps(r) + "\n" for r in [*lines, {"epoch_metrics": metrics}])
        uris.write_bytes(progress_file(self.run_folder, epoch), text.encode())
        entry = (step, time.time(), epoch_scalars(metrics))
        self.epoch_events().add(*entry)
        self.epoch_events().write()
        self.history = [*(m for m in self.history if m["epoch"] < epoch), metrics]
        uris.write_bytes(uris.join(self.run_folder, "curves.png"),
                         draw_curves(self.history, f"run {self.name}: epoch {epoch}"))
        if self.mlflow:
            self.mlflow.log_epoch([*self.steps, entry])

    def best(self, checkpoint_file: str) -> None:
        """A new best checkpoint (a local file), to MLflow's artifacts."""
        if self.mlflow:
            self.mlflow.log_best(checkpoint_file)
