"""The options of bulk detection (jobs/detect.py's flags, and what reevaluation passes), with
their defaults and the checks that run before anything starts."""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from ..images import MAX_PIXELS
from ..options import above, at_least, between, check, option, with_absolute_paths
from ..predictions import SCORE_THRESHOLD
from .read import ATTEMPTS

# Restarts of one model actor (killed by the host's memory monitor, a crash, a lost node) before
# the run stops and says why; Ray's default restarts it forever.
ACTOR_RESTARTS = 4


def actors_arg(text: str) -> tuple[int, int]:
    """--actors MIN,MAX as argparse reads it; its range is the option's check (actor_range)."""
    try:
        low, high = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not MIN,MAX (two whole numbers)") from None
    return low, high


def actor_range(actors: tuple[int, int]) -> str | None:
    if len(actors) == 2 and 1 <= actors[0] <= actors[1]:
        return None
    return f"takes MIN,MAX with 1 <= MIN <= MAX, not {','.join(map(str, actors))}"


@dataclass(frozen=True)
class DetectConfig:
    """Bulk detection's settings: each field that is an option is jobs/detect.py's flag of that
    name (its help and check here, pipeline/options.py); reevaluation shares several."""

    images: str = option(path=True, help="folder / s3:// prefix, COCO .json, or manifest .txt/.parquet (or a "
                         "folder of .parquet)")
    output: str = option(path=True, help="folder (path or s3://) for the Parquet part files")
    checkpoint: str = option(path=True, help="ours, a reference .pth, a Hugging Face folder, or a .onnx graph from "
                             "jobs/export.py")
    image_root: str | None = option(None, path=True, help="for a COCO .json: folder of its file_names (default: "
                                    "the JSON's folder)")
    score_threshold: float = option(SCORE_THRESHOLD, check=between(0, 1), help="keep boxes scoring at least this "
                                    f"(default {SCORE_THRESHOLD}, as training's validation keeps: jobs/evaluate.py "
                                    "then gives the AP training printed; 0 keeps every query)")
    batch_size: int = option(8, help="images per model call, at most", check=at_least(1))
    window: int | None = option(None, check=at_least(1),
                                help="images an actor groups by canvas at once (default 32 x batch size)")
    min_size: int | None = option(None, check=at_least(1), help="shorter side after resizing (default: the "
                                  "checkpoint's input contract, what it was trained and validated with; the "
                                  "paper's 800 where it records none)")
    max_size: int | None = option(None, check=at_least(1),
                                  help="longer side cap after resizing (default: the checkpoint's; 1333)")
    max_pixels: int = option(MAX_PIXELS, help="larger images get an error row", check=at_least(1))
    read_attempts: int = option(ATTEMPTS, check=at_least(1),
                                help="reads of a file, with backoff, before its row records `unreadable`")
    actor_restarts: int = option(ACTOR_RESTARTS, check=at_least(0), help="restarts of a model actor that dies (a "
                                 "crash, out of memory, a lost node) before the run stops with a line that says why")
    device: str = option("auto", choices=("auto", "cuda", "cpu"), help="auto: GPU actors when the cluster has GPUs "
                         "now; cuda: ask the autoscaler for GPU nodes and wait for them; cpu: CPU actors")
    actors: tuple[int, int] | None = option(None, parse=actors_arg, check=actor_range, metavar="MIN,MAX",
                                            help="model actors (default: one per GPU, or half the CPUs)")
    gpus_per_actor: float | None = option(None, check=at_least(0), help="default: 1 on a GPU (--device), else 0")
    cpus_per_actor: float = option(1.0, check=above(0), help="also torch threads on CPU")
    images_per_read_task: int = option(64, file_only=True, check=at_least(1), help="inputs a read task decodes")
    shard_size: int = option(8192, check=at_least(1), help="inputs per shard (the unit of resumption)")
    rows_per_file: int = option(4096, check=at_least(1),
                                help="rows a write task gathers before writing (a file holds one shard's rows)")
    retry_errors: bool = option(True, flag="--no-retry-errors", help="on a re-run, keep rows whose error is "
                                "transient (unreadable, inference) instead of running their shard again")
    resource_wait: float | None = option(None, metavar="SECONDS", check=at_least(0),
                                         help="how long to wait for the autoscaler to add what the run needs "
                                         "(default: 600 with GPU actors, else 0: stop at once with what is short)")
    overwrite: bool = option(False, help="delete the output's part files and start fresh")

    def __post_init__(self) -> None:
        check(self)

    @property
    def images_per_window(self) -> int:
        return self.window or 32 * self.batch_size

    def resolved(self) -> DetectConfig:
        """The config with its local paths absolute (pipeline/options.py)."""
        return with_absolute_paths(self)
