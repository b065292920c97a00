"""Pictures of predictions, so a person can look at what a run found."""
from __future__ import annotations

import hashlib
import os

import pyarrow.compute as pc
import torch
from torchvision.io import encode_png
from torchvision.utils import draw_bounding_boxes

from model import uri as uris

from . import predictions
from .images import decode_rgb


def render_predictions(source: str, count: int, folder: str, names: dict[int, str] | None = None,
                       max_boxes: int | None = None) -> list[str]:
    """Draw the boxes (the best max_boxes) of `count` rows of a predictions table (those
    with detections first, by path) on their images; returns the PNG paths written."""
    table = predictions.read_predictions(source, ["path", "boxes", "scores", "labels", "error"])
    table = table.filter(pc.is_null(table["error"]))
    found = pc.list_value_length(table["scores"])
    table = table.append_column("found", found).sort_by([("found", "descending"), ("path", "ascending")])
    written = []
    for row in table.slice(0, count).to_pylist():
        image = torch.from_numpy(decode_rgb(uris.read_bytes(row["path"]))).permute(2, 0, 1).contiguous()
        boxes = torch.tensor(row["boxes"], dtype=torch.float32).reshape(-1, 4)[:max_boxes]  # best first
        labels = [f"{(names or {}).get(l, l)} {s:.2f}" for l, s in zip(row["labels"], row["scores"])][:max_boxes]
        picture = draw_bounding_boxes(image, boxes, labels=labels, colors="yellow", width=2)
        stem = os.path.splitext(os.path.basename(row["path"]))[0]
        target = uris.join(folder, f"{stem}-{hashlib.sha1(row['path'].encode()).hexdigest()[:8]}.png")
        uris.write_bytes(target, encode_png(picture).numpy().tobytes())
        written.append(target)
    return written
