"""The options of scoring (jobs/evaluate.py) and of the scheduled re-evaluation
(jobs/reevaluate.py), each defined once (pipeline/options.py): the re-evaluation shares the
scoring options with evaluate and the detection options with detect."""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass

from ..detection.config import DetectConfig
from ..options import above, at_least, check, option, shared, with_absolute_paths
from .scoring import BACKENDS, DEFAULT_BACKEND, MAX_DETECTIONS, max_dets_problem

REGRESSION_EXIT = 3  # jobs/reevaluate.py's exit code when a new checkpoint regressed (--fail-on-regression)


def duration_seconds(text: str) -> float:
    """'90s', '30m', '6h', '1d' -> seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"expected a duration like 30m, 6h or 1d, got {text!r}")
    return float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


@dataclass(frozen=True)
class EvaluateConfig:
    predictions: str = option(path=True, help="a Parquet file or folder of part files (path or s3://)")
    annotations: str = option(path=True, help="COCO annotation JSON (path or s3://)")
    output: str | None = option(None, path=True, help="folder (path or s3://) for metrics.json and metrics.parquet")
    backend: str = option(DEFAULT_BACKEND, choices=BACKENDS,
                          help="COCO scorer (pycocotools is the reference; the others give the same numbers)")
    max_dets: int = option(MAX_DETECTIONS, check=max_dets_problem, help="detections scored per image, the top by "
                           "score; in a re-evaluation's history, rows of another cap are a separate series")
    panoptic_annotations: str | None = option(None, path=True,
                                              help="COCO panoptic JSON (path or s3://): scores PQ / SQ / RQ")
    panoptic_folder: str | None = option(None, path=True, help="its PNGs (default: the JSON's path without .json)")

    def __post_init__(self) -> None:
        check(self)

    def resolved(self) -> EvaluateConfig:
        return with_absolute_paths(self)


@dataclass(frozen=True)
class ReevaluateConfig:
    checkpoints: str = option(path=True, help="folder / s3:// prefix searched recursively, or one file")
    images: str = option(path=True, help="folder of the evaluation images (the file_names' root)")
    annotations: str = option(path=True, help="COCO annotation JSON of the evaluation set")
    history: str = option(path=True, help="folder (path or s3://) of the history, plot and report")
    score_threshold: float = shared(DetectConfig, "score_threshold")
    min_size: int | None = shared(DetectConfig, "min_size", help="shorter side after resizing (default: each "
                                  "checkpoint's own input contract)")
    max_size: int | None = shared(DetectConfig, "max_size", help="longer side cap (default: each checkpoint's own)")
    batch_size: int = shared(DetectConfig, "batch_size")
    actors: tuple[int, int] | None = shared(DetectConfig, "actors")
    regression_pct: float = option(1.0, check=at_least(0), help="an AP drop of more than this (relative %%) is "
                                   "reported as a regression")
    fail_on_regression: float | None = option(None, metavar="PCT", check=at_least(0), help=f"exit {REGRESSION_EXIT} "
                                              "when AP drops more than PCT %% (relative; it is then the "
                                              "--regression-pct)")
    every: float | None = option(None, metavar="DURATION", parse=duration_seconds, check=above(0),
                                 help="keep running, once per DURATION (30m, 6h, 1d; in a --config file, seconds "
                                 "or the same text)")
    backend: str = shared(EvaluateConfig, "backend")  # both give the same numbers, so not part of the key
    max_dets: int = shared(EvaluateConfig, "max_dets")  # part of the key, as it changes the numbers
    panoptic_annotations: str | None = shared(EvaluateConfig, "panoptic_annotations",
                                              help="COCO panoptic JSON: PQ / SQ / RQ of checkpoints with stuff "
                                              "classes, kept in the history")
    panoptic_folder: str | None = shared(EvaluateConfig, "panoptic_folder")

    def __post_init__(self) -> None:
        check(self)
        if self.fail_on_regression is not None:  # the drop that fails the job is the one reported
            object.__setattr__(self, "regression_pct", self.fail_on_regression)

    def resolved(self) -> ReevaluateConfig:
        """The config with its local paths absolute (pipeline/options.py)."""
        return with_absolute_paths(self)
