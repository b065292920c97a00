"""Scoring predictions with COCO metrics, and re-scoring new checkpoints on a schedule.

    backends.py      the COCO scorers' names
    scoring.py       COCO bbox and mask stats of a predictions table (pycocotools, hotcoco, faster-coco-eval)
    panoptic_quality.py  PQ / SQ / RQ of its panoptic segmentations (panopticapi's rules)
    reevaluation.py  the scheduled re-evaluation: detect + score each new checkpoint, keep a history
"""
from __future__ import annotations

from .. import exports

_MODULE_OF = {
    "BACKENDS": "backends",
    "STAT_NAMES": "scoring",
    "stat_names": "scoring",
    "COLUMNS": "scoring",
    "BATCH_ROWS": "scoring",
    "DEFAULT_BACKEND": "backends",
    "MAX_DETECTIONS": "scoring",
    "CocoScorer": "scoring",
    "format_tables": "scoring",
    "max_dets_arg": "scoring",
    "score_files": "scoring",
    "score_predictions": "scoring",
    "write_evaluation": "scoring",
    "detections_array": "scoring",
    "PanopticQuality": "panoptic_quality",
    "score_panoptic_files": "panoptic_quality",
    "ReevaluateConfig": "reevaluation",
    "reevaluate": "reevaluation",
}
__all__ = sorted(_MODULE_OF)
__getattr__ = exports(__name__, _MODULE_OF)
