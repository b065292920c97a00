"""Canvases chosen from each image's own size: the batching rule of bulk detection.

Real photos come in dozens of sizes, so batching by exact shape gives model calls of one or
two images. Each resized image is instead zero-padded (bottom/right, after normalisation,
with DETR's padding mask) onto a canvas that depends on its own resized size only: the
shorter side padded to `min_size` rounded up to the stride, the longer to the first of a few
levels (a 4:3 photo's, then `max_size`), each rounded up to the stride. An image gets the
same canvas alone or in any batch, so its detections do not depend on its neighbours, and
the few canvases (four at the default 800/1333: 800x1088 and 800x1344, either way round)
fill batches: on the COCO val sizes at most ~10% of a canvas is padding.

Sizes only, no pixels: the read tasks compute canvases from headers without loading torch;
the model actor pads onto them (pipeline/detector.py).
"""
from __future__ import annotations

import math

STRIDE = 32  # the backbones' largest stride: canvases are multiples of it
CANVAS_ASPECTS = (4 / 3,)  # long-side levels besides max_size: 4:3, the commonest photo shape


def resized_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """(height, width) after resizing the shorter side to min_size unless the longer side would
    pass max_size (torchvision's rounding), never below 1 px."""
    short, long = sorted((height, width))
    new_short, new_long = min_size, int(min_size * long / short)
    if new_long > max_size:
        new_short, new_long = max(1, int(max_size * new_short / new_long)), max_size
    return (new_short, new_long) if height <= width else (new_long, new_short)


def _round_up(value: int) -> int:
    return math.ceil(value / STRIDE) * STRIDE


def canvas_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """The canvas (height, width) of an image of this *resized* size: a function of it alone."""
    levels = sorted({_round_up(min(max_size, math.ceil(min_size * a))) for a in CANVAS_ASPECTS}
                    | {_round_up(max(max_size, min_size))})
    short, long = sorted((height, width))
    canvas_short = max(_round_up(min_size), _round_up(short))
    canvas_long = next((level for level in levels if level >= long), _round_up(long))
    canvas_long = max(canvas_long, canvas_short)
    return (canvas_short, canvas_long) if width >= height else (canvas_long, canvas_short)
