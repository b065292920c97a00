"""DETR in pure PyTorch: network, matcher, losses, post-processing, checkpoints.

The names below load their module (and torch) on first use, so that code needing only
`storage` (the evaluation job, the Parquet readers) starts without importing torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_MODULE_OF = {
    "CheckpointError": "checkpoint",
    "load_checkpoint": "checkpoint",
    "read_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "weights_id": "checkpoint",
    "InputContract": "contract",
    "PAPER_CONTRACT": "contract",
    "PRESETS": "config",
    "DetrConfig": "config",
    "get_config": "config",
    "SetCriterion": "criterion",
    "build_criterion": "criterion",
    "DETR": "detr",
    "build_detr": "detr",
    "pad_images": "detr",
    "optimize_for_inference": "inference",
    "HungarianMatcher": "matcher",
    "PostProcess": "postprocess",
    "PostProcessPanoptic": "mask_postprocess",
    "PostProcessSegm": "mask_postprocess",
    "DETRsegm": "segmentation",
}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
