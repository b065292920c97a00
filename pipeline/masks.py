"""Instance masks in COCO's encodings, through pycocotools: polygons ([[x0, y0, x1, y1, ...], ...]),
RLE ({"size": [height, width], "counts": "..."} compressed, or a list of run lengths).

A segmentation that cannot be used gets a kind and a one-line reason (check_segmentation), so a
reader can count and name it instead of failing on it.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pycocotools.mask as mask_utils

OUTSIDE_SLACK = 1.0  # px: polygon points this far past the image's edge are still "inside"


def check_segmentation(segmentation: Any, width: int, height: int) -> tuple[str, str] | None:
    """(kind, reason) when this segmentation cannot be used as the mask of an object of a
    width x height image, else None. Points outside the image are a reason too (the mask would
    be clipped)."""
    if isinstance(segmentation, dict):
        size, counts = segmentation.get("size"), segmentation.get("counts")
        if list(size or []) != [height, width]:
            return "rle_size", f"RLE of size {size} for an image of [{height}, {width}]"
        if not isinstance(counts, (str, bytes, list)) or not counts:
            return "rle_counts", "RLE without counts"
        return None
    if not isinstance(segmentation, list) or not segmentation:
        return "not_a_segmentation", f"segmentation is neither polygons nor RLE: {str(segmentation)[:60]}"
    for polygon in segmentation:
        if not isinstance(polygon, list) or not all(isinstance(v, (int, float)) for v in polygon):
            return "polygon_values", f"polygon is not a list of numbers: {str(polygon)[:60]}"
        if len(polygon) % 2:
            return "polygon_odd", f"polygon of {len(polygon)} coordinates (odd)"
        if len(polygon) < 6:
            return "polygon_points", f"polygon of {len(polygon) // 2} points (at least 3)"
        xs, ys = polygon[0::2], polygon[1::2]  # plain Python: COCO train has 860k polygons to check
        if (min(xs) < -OUTSIDE_SLACK or min(ys) < -OUTSIDE_SLACK or max(xs) > width + OUTSIDE_SLACK
                or max(ys) > height + OUTSIDE_SLACK):
            return "outside_image", "polygon outside the image"
    return None


def to_rle(segmentation: Any, width: int, height: int) -> dict[str, Any]:
    """One compressed RLE of a usable segmentation (polygons merged)."""
    if isinstance(segmentation, dict):
        if isinstance(segmentation["counts"], list):  # uncompressed
            return mask_utils.frPyObjects(segmentation, height, width)
        return segmentation
    return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))


def decode(segmentations: list[Any], width: int, height: int) -> np.ndarray:
    """The masks [n, height, width] uint8 (0/1) of usable segmentations."""
    if not segmentations:
        return np.zeros((0, height, width), np.uint8)
    rles = [to_rle(s, width, height) for s in segmentations]
    return np.ascontiguousarray(mask_utils.decode(rles).transpose(2, 0, 1))


def encode(masks: np.ndarray) -> list[str]:
    """Masks [n, H, W] (bool or 0/1) as COCO's compressed RLE counts, one string each (the size
    is the image's)."""
    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [r["counts"].decode("ascii") for r in rles]
