"""COCO bbox scoring with pycocotools."""
from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def coco_ground_truth(coco: dict[str, Any]) -> COCO:
    gt = COCO()
    gt.dataset = coco
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def coco_bbox_stats(gt: COCO, detections: np.ndarray) -> dict[str, float]:
    """The 12 standard stats of detections [N,7] = (image_id, x, y, w, h, score, category_id).

    Rows are sorted by image id, then score descending (stably) first: pycocotools breaks
    score ties by input order, so an unsorted input would make the numbers order-dependent.
    """
    if len(detections) == 0:
        return {name: 0.0 for name in STAT_NAMES}
    detections = np.asarray(detections, dtype=np.float64)
    detections = detections[np.lexsort((-detections[:, 5], detections[:, 0]))]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(gt, gt.loadRes(detections), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(v) for name, v in zip(STAT_NAMES, evaluator.stats)}
