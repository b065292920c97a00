"""Pictures of predictions, so a person can look at what a run found."""
from __future__ import annotations

import hashlib
import os

import pyarrow.compute as pc
import torch
from torchvision.io import encode_png
from torchvision.utils import draw_bounding_boxes, make_grid

from model import uri as uris

from . import predictions
from .images import decode_rgb


def render_predictions(source: str, count: int, folder: str, names: dict[int, str] | None = None,
                       max_boxes: int | None = None, min_score: float = 0.0, grid: str | None = None) -> list[str]:
    """Draw the boxes (the best max_boxes scoring at least min_score) of `count` rows of a
    predictions table (those with detections first, by path) on their images; returns the
    PNG paths written. With `grid`, also writes all the pictures side by side there."""
    table = predictions.read_predictions(source, ["path", "boxes", "scores", "labels", "error"])
    table = table.filter(pc.is_null(table["error"]))
    found = pc.list_value_length(table["scores"])
    table = table.append_column("found", found).sort_by([("found", "descending"), ("path", "ascending")])
    written, pictures = [], []
    for row in table.slice(0, count).to_pylist():
        image = torch.from_numpy(decode_rgb(uris.read_bytes(row["path"]))).permute(2, 0, 1).contiguous()
        shown = [i for i, score in enumerate(row["scores"]) if score >= min_score][:max_boxes]  # best first
        boxes = torch.tensor(row["boxes"], dtype=torch.float32).reshape(-1, 4)[shown]
        labels = [f"{(names or {}).get(row['labels'][i], row['labels'][i])} {row['scores'][i]:.2f}" for i in shown]
        picture = draw_bounding_boxes(image, boxes, labels=labels, colors="yellow", width=2)
        pictures.append(picture)
        stem = os.path.splitext(os.path.basename(row["path"]))[0]
        target = uris.join(folder, f"{stem}-{hashlib.sha1(row['path'].encode()).hexdigest()[:8]}.png")
        uris.write_bytes(target, encode_png(picture).numpy().tobytes())
        written.append(target)
    if grid and pictures:
        uris.write_bytes(grid, encode_png(side_by_side(pictures)).numpy().tobytes())
    return written


def side_by_side(pictures: list[torch.Tensor]) -> torch.Tensor:
    """uint8 3xHxW pictures of any sizes in one row, each padded to the largest."""
    height = max(p.shape[1] for p in pictures)
    width = max(p.shape[2] for p in pictures)
    padded = [torch.nn.functional.pad(p, (0, width - p.shape[2], 0, height - p.shape[1]), value=255) for p in pictures]
    return make_grid(padded, nrow=len(padded), padding=4, pad_value=255)
