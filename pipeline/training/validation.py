"""Training's validation: the detection path itself, so that the AP a run prints is the AP
jobs/detect.py then jobs/evaluate.py deliver with its checkpoint.

Each worker detects every world_size-th validation image with bulk detection's own read stage,
decoder, canvases, batching and post-processing (pipeline/detection/actor.py), at detection's
default score threshold; rank 0 gathers the rows and scores them with jobs/evaluate.py's scorer.
An image's detections depend on it alone (its canvas), so the numbers are those of one worker.
"""
from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import torch

from model.contract import InputContract
from model.network import DetectionNetwork

from .. import predictions
from ..detection.actor import Detector
from ..detection.read import fetch
from ..evaluation.metrics import evaluate
from ..evaluation.report import flat_metrics
from ..evaluation.scoring import CocoScorer
from ..images import MAX_PIXELS

WINDOW_BATCHES = 32  # images read and grouped by canvas at once, in batches: as a detection actor's window


def detect_images(model: DetectionNetwork, records: list[dict[str, Any]], contract: InputContract, batch_size: int,
                  score_threshold: float = predictions.SCORE_THRESHOLD) -> pa.Table:
    """Predictions rows of the images of `records` (path, image_id), made as bulk detection makes
    them, window by window. A row that is an error (an unreadable image) is a ValueError naming it."""
    detector = Detector.of_model(model, contract, score_threshold, batch_size, model_id="validation")
    window = WINDOW_BATCHES * batch_size
    tables = []
    for start in range(0, len(records), window):
        chunk = records[start:start + window]
        rows = fetch(pa.table({"path": pa.array([r["path"] for r in chunk], pa.large_string()),
                               "image_id": pa.array([r["image_id"] for r in chunk], pa.int64()),
                               "shard": pa.array([0] * len(chunk), pa.int32())}), contract, MAX_PIXELS)
        table = detector(rows).select(predictions.SCHEMA.names)
        failed = table.filter(pc.invert(pc.is_null(table["error"])))
        if failed.num_rows:
            raise ValueError(f"validation image {failed['path'][0]}: {failed['error'][0]}")
        tables.append(table)
    return pa.concat_tables(tables) if tables else predictions.SCHEMA.empty_table()


def validate(model: DetectionNetwork, records: list[dict[str, Any]], contract: InputContract, batch_size: int,
             scorer: CocoScorer | None, rank: int, world_size: int) -> dict[str, float]:
    """The COCO stats of the validation images on rank 0 (the others get an empty dict): of the
    boxes and, for a model with the mask head whose ground truth has segmentations, of the masks
    (as segm_AP, segm_AP50, ...): jobs/evaluate.py's evaluation of the same rows."""
    was_training = model.training
    table = detect_images(model.eval(), records[rank::world_size], contract, batch_size)
    model.train(was_training)
    tables = gather(table, world_size)
    if scorer is None:  # not rank 0
        return {}
    return flat_metrics(evaluate(tables, scorer))


def gather(table: pa.Table, world_size: int) -> list[pa.Table]:
    """Every worker's table, on every worker."""
    if world_size == 1:
        return [table]
    tables: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(tables, table)
    return tables
