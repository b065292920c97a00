"""Decode next to the model and pad onto canvases chosen from each image's own size.

Real photos come in dozens of sizes, so batching by exact shape gives model calls of one or
two images. Each resized image is instead zero-padded (bottom/right, after normalisation,
with DETR's padding mask) onto a canvas that depends on its own resized size only: the
shorter side padded to `min_size` rounded up to the stride, the longer to the first of a few
levels (a 4:3 photo's, then `max_size`), each rounded up to the stride. An image gets the
same canvas alone or in any batch, so its detections do not depend on its neighbours, and
the few canvases (four at the default 800/1333: 800x1088 and 800x1344, either way round)
fill batches: on the COCO val sizes at most ~10% of a canvas is padding.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torchvision.transforms.v2.functional as TF
from torchvision.io import ImageReadMode, decode_jpeg

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


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """[...,H,W] stored pixels -> displayed pixels for an EXIF orientation (1-8), as Pillow's
    ImageOps.exif_transpose does."""
    if orientation in (5, 6, 7, 8):
        image = image.transpose(-1, -2)
    flips = {2: (-1,), 3: (-1, -2), 4: (-2,), 5: (), 6: (-1,), 7: (-1, -2), 8: (-2,)}.get(orientation, ())
    return image.flip(flips) if flips else image


def decode_jpegs(data: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """uint8 3xHxW (stored orientation) for each encoded JPEG; one batched nvJPEG call on a GPU.
    Raises on a corrupt or truncated file (the caller retries one by one to find it)."""
    images = decode_jpeg(list(data), mode=ImageReadMode.RGB, device=device)
    return list(images)


def to_canvas(images: Sequence[torch.Tensor], canvas: tuple[int, int], min_size: int, max_size: int,
              mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Displayed uint8 3xHxW images (on the model's device) -> resized, normalised, zero-padded
    [B,3,*canvas] float batch and its mask [B,*canvas] (True on padding)."""
    device = images[0].device
    batch = torch.zeros((len(images), 3, *canvas), dtype=torch.float32, device=device)
    mask = torch.ones((len(images), *canvas), dtype=torch.bool, device=device)
    for image, padded, m in zip(images, batch, mask):
        height, width = resized_size(image.shape[1], image.shape[2], min_size, max_size)
        resized = TF.resize(image, [height, width], antialias=True)
        padded[:, :height, :width] = (resized.float() / 255 - mean) / std
        m[:height, :width] = False
    return batch, mask
