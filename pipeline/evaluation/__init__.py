"""Scoring predictions with COCO metrics, and re-scoring new checkpoints on a schedule.

    config.py        the options of scoring and of the re-evaluation
    metrics.py       evaluation, once for every job: every metric a predictions table allows, in one pass
    rows.py          what is kept of its rows for scoring, and counted when left out
    scoring.py       COCO bbox and segm stats of detections (pycocotools, hotcoco, faster-coco-eval)
    labels.py        whether a table's labels are the annotations' category ids
    panoptic_quality.py  PQ / SQ / RQ of its panoptic segmentations (panopticapi's rules)
    report.py        console tables, metrics files, the flat row of numbers
    reevaluation.py  the scheduled re-evaluation: detect + score each new checkpoint, keep a history

Import from the modules (this package imports nothing).
"""
