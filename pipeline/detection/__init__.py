"""Bulk detection: images (local or s3://) -> Ray Data -> model actors -> Parquet, each image once.

    run.py    the detection run: plan, resume, resources, the Ray Data chain, the summary
    plan.py   its input plan: the listing or manifest cut into shards (the unit of resumption)
    read.py   its read stage: each file's bytes and header, in CPU tasks without torch
    actor.py  its model actor: decode, canvases, batches, DETR (also training's validation)
    sink.py   its sink: whole Parquet part files per shard
"""
from __future__ import annotations

from .. import exports

_MODULE_OF = {
    "DetectConfig": "config",
    "actors_arg": "config",
    "run_detection": "run",
    "read_model": "run",
    "SCORE_THRESHOLD": "config",
    "Detector": "actor",
    "DetectorActor": "actor",
    "model_batches": "actor",
    "fetch": "read",
    "TRANSIENT_ERRORS": "read",
}
__all__ = sorted(_MODULE_OF)
__getattr__ = exports(__name__, _MODULE_OF)
