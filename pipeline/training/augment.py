"""The paper's box-aware augmentation (torchvision.transforms.v2 + tv_tensors).

Train: horizontal flip, then either a multi-scale resize of the shorter side, or
resize -> random crop -> multi-scale resize. Validation resizes by the input contract
(model/contract.py: `val_size` and `max_size` become its sizes) as detection does. Sizes are
configurable and scale together (AugmentConfig.scaled) so small images get
proportionally small scales. Normalisation happens on the training worker, so
augmented images travel as uint8 (a quarter of the bytes).
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2 as v2
import torchvision.transforms.v2.functional as F
from torchvision import tv_tensors
from torchvision.ops import box_convert

from .config import AugmentConfig  # its sizes live with the run's settings, light to import


class RandomSizeCrop(v2.Transform):
    """Crop a random region whose sides are drawn in [min_size, max_size] (the reference's)."""

    def __init__(self, min_size: int, max_size: int):
        super().__init__()
        self.min_size, self.max_size = min_size, max_size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        crop_w = random.randint(min(self.min_size, width), min(width, self.max_size))
        crop_h = random.randint(min(self.min_size, height), min(height, self.max_size))
        return {"top": random.randint(0, height - crop_h), "left": random.randint(0, width - crop_w),
                "height": crop_h, "width": crop_w}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return F.crop(inpt, **params)


def train_transform(config: AugmentConfig) -> v2.Transform:
    multi_scale = v2.RandomShortestSize(list(config.scales), max_size=config.max_size)
    return v2.Compose([
        v2.RandomHorizontalFlip(config.hflip),
        v2.RandomChoice([
            multi_scale,
            v2.Compose([
                v2.RandomShortestSize(list(config.crop_resize)),
                RandomSizeCrop(*config.crop_size),
                multi_scale,
            ]),
        ]),
        v2.ClampBoundingBoxes(),
        v2.SanitizeBoundingBoxes(),  # drops boxes the crop emptied, with their labels
    ])


def transform_sample(image: torch.Tensor, boxes_xyxy: np.ndarray, labels: np.ndarray, transform: v2.Transform,
                     masks: np.ndarray | None = None) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray | None]:
    """Apply a box-aware transform; return image, normalised cxcywh boxes, labels and, when
    given ([n,H,W], one per box), the masks moved with them (flipped, resized nearest, cropped;
    dropped with the boxes a crop empties)."""
    height, width = image.shape[-2:]
    sample = {
        "image": tv_tensors.Image(image),
        "boxes": tv_tensors.BoundingBoxes(torch.tensor(boxes_xyxy, dtype=torch.float32).reshape(-1, 4),
                                          format="XYXY", canvas_size=(height, width)),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }
    if masks is not None:
        sample["masks"] = tv_tensors.Mask(torch.from_numpy(masks))
    out = transform(sample)
    new_h, new_w = out["image"].shape[-2:]
    boxes = box_convert(out["boxes"].as_subclass(torch.Tensor), "xyxy", "cxcywh")
    boxes = boxes / torch.tensor([new_w, new_h, new_w, new_h], dtype=torch.float32)
    moved = out["masks"].as_subclass(torch.Tensor).numpy() if masks is not None else None
    return out["image"].as_subclass(torch.Tensor), boxes.numpy(), out["labels"].numpy(), moved
