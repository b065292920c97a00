"""The options of bulk detection (jobs/detect.py's flags, and what reevaluation passes), with
their defaults and the checks that run before anything starts."""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from ..images import MAX_PIXELS
from ..paths import with_absolute_paths
from ..predictions import SCORE_THRESHOLD
from .read import ATTEMPTS

# Restarts of one model actor (killed by the host's memory monitor, a crash, a lost node) before
# the run stops and says why; Ray's default restarts it forever.
ACTOR_RESTARTS = 4


@dataclass(frozen=True)
class DetectConfig:
    images: str  # folder / s3:// prefix, COCO annotation .json, or manifest (.txt / .parquet / folder of .parquet)
    output: str  # folder (local or s3://) that receives the part files
    checkpoint: str
    image_root: str | None = None  # for a COCO file: where its file_names live (default: its folder)
    score_threshold: float = SCORE_THRESHOLD  # 0.05: training's validation keeps the same boxes
    batch_size: int = 8  # images per model call, at most
    window: int | None = None  # images an actor groups by canvas at once; default 32 x batch_size
    min_size: int | None = None  # shorter side after resizing; default the checkpoint's input contract
    max_size: int | None = None  # longer side cap; default the checkpoint's
    max_pixels: int = MAX_PIXELS  # larger images get an error row (decompression bombs)
    read_attempts: int = ATTEMPTS  # reads of a file (with backoff) before its row records `unreadable`
    actor_restarts: int = ACTOR_RESTARTS  # of a model actor that dies, before the run stops and says why
    device: str = "auto"  # auto: GPUs when the cluster has them; cuda: wait for GPU nodes; cpu
    actors: tuple[int, int] | None = None  # (min, max) pool size; default from the cluster
    gpus_per_actor: float | None = None  # default: 1 on a GPU, else 0
    cpus_per_actor: float = 1.0  # also the actor's torch threads on CPU
    images_per_read_task: int = 64
    shard_size: int = 8192  # inputs per shard: the unit of resumption
    rows_per_file: int = 4096  # a write task gathers at least this many rows (or a shard's end)
    retry_errors: bool = True  # a re-run runs again the shards with transient error rows
    resource_wait_s: float | None = None  # how long to wait for the autoscaler; default 600 with cuda, else 0
    overwrite: bool = False

    @property
    def images_per_window(self) -> int:
        return self.window or 32 * self.batch_size

    def check(self) -> None:
        """A ValueError naming the first option out of its range (before anything starts)."""
        counts = {"--batch-size": self.batch_size, "--window": self.window or 1, "--shard-size": self.shard_size,
                  "--rows-per-file": self.rows_per_file, "--read-attempts": self.read_attempts,
                  "--max-pixels": self.max_pixels}
        for flag, value in counts.items():
            if value < 1:
                raise ValueError(f"{flag} must be at least 1, not {value}")
        if self.actor_restarts < 0:
            raise ValueError(f"--actor-restarts must be at least 0, not {self.actor_restarts}")
        if not self.cpus_per_actor > 0:
            raise ValueError(f"--cpus-per-actor must be above 0, not {self.cpus_per_actor}")
        if not 0 <= self.score_threshold <= 1:
            raise ValueError(f"--score-threshold is a score, between 0 and 1, not {self.score_threshold}")
        if self.actors is not None and not 1 <= self.actors[0] <= self.actors[1]:
            raise ValueError(f"--actors takes MIN,MAX with 1 <= MIN <= MAX, not {self.actors}")

    def resolved(self) -> DetectConfig:
        """The config with its local paths absolute (pipeline/paths.py)."""
        return with_absolute_paths(self, {"images": "--images", "output": "--output", "checkpoint": "--checkpoint",
                                          "image_root": "--image-root"})


def actors_arg(text: str) -> tuple[int, int]:
    """--actors MIN,MAX as argparse reads it (one line on a bad value)."""
    try:
        low, high = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not MIN,MAX (two whole numbers)") from None
    if not 1 <= low <= high:
        raise argparse.ArgumentTypeError(f"{text!r}: MIN,MAX with 1 <= MIN <= MAX")
    return low, high
