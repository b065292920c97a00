"""Pictures of predictions, so a person can look at what a run found: boxes with their labels
and, where the table has them, the masks filled in the boxes' colours."""
from __future__ import annotations

import hashlib
import json
import os

import pyarrow.compute as pc
import torch
import torchvision.transforms.v2.functional as TF
from matplotlib import font_manager
from torchvision.io import encode_png
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks, make_grid

import storage as uris

from .. import predictions
from ..evaluation.labels import model_label_names
from ..images import decode_image
from ..masks import decode

MIN_SIDE = 384  # smaller images are drawn enlarged, so that their labels can be read
FONT_SIZE = 14
COLOURS = ("#ffd700", "#00e5ff", "#ff4fd8", "#7cff4f", "#ff8c00", "#ffffff")  # by label: bright on most photos


def class_names(source: str, annotations: str | None = None) -> dict[int, str] | None:
    """The names to label a predictions table's boxes with: the model's own (a family folder's
    id2label, recorded with the predictions), else the categories of the COCO file its images
    came from (`annotations`, when it is one); None when neither names them."""
    names = model_label_names(predictions.run_metadata(source) or {})
    if names:
        return names
    if annotations and annotations.endswith(".json"):
        return {int(c["id"]): str(c["name"]) for c in json.loads(uris.read_bytes(annotations))["categories"]}
    return None


def render_predictions(source: str, count: int, folder: str, names: dict[int, str] | None = None,
                       max_boxes: int | None = None, min_score: float = 0.5, grid: str | None = None) -> list[str]:
    """Draw the boxes (the best max_boxes scoring at least min_score) and their masks, if any, of
    `count` rows of a predictions table (those with detections first, by path) on their images;
    returns the PNG paths written. With `grid`, also writes all the pictures side by side there."""
    table = predictions.read_predictions(source, ["path", "width", "height", "boxes", "scores", "labels", "error",
                                                  "masks"])
    table = table.filter(pc.is_null(table["error"]))
    found = pc.list_value_length(table["scores"])
    table = table.append_column("found", found).sort_by([("found", "descending"), ("path", "ascending")])
    written, pictures = [], []
    for row in table.slice(0, count).to_pylist():
        image = decode_image(uris.read_bytes(row["path"]))
        shown = [i for i, score in enumerate(row["scores"]) if score >= min_score][:max_boxes]  # best first
        boxes = torch.tensor(row["boxes"], dtype=torch.float32).reshape(-1, 4)[shown]
        labels = [f"{(names or {}).get(row['labels'][i], row['labels'][i])} {row['scores'][i]:.2f}" for i in shown]
        colours = [COLOURS[row["labels"][i] % len(COLOURS)] for i in shown]
        masks = None
        if row["masks"] is not None:
            masks = torch.from_numpy(decode([{"size": [row["height"], row["width"]], "counts": row["masks"][i]}
                                             for i in shown], row["width"], row["height"])).bool()
        picture = draw(image, boxes, labels, colours, masks)
        pictures.append(picture)
        stem = os.path.splitext(os.path.basename(row["path"]))[0]
        target = uris.join(folder, f"{stem}-{hashlib.sha1(row['path'].encode()).hexdigest()[:8]}.png")
        uris.write_bytes(target, encode_png(picture).numpy().tobytes())
        written.append(target)
    if grid and pictures:
        uris.write_bytes(grid, encode_png(side_by_side(pictures)).numpy().tobytes())
    return written


def draw(image: torch.Tensor, boxes: torch.Tensor, labels: list[str], colours: list[str],
         masks: torch.Tensor | None = None) -> torch.Tensor:
    """The image (enlarged to MIN_SIDE when smaller) with its masks ([n,H,W] bool, one per box,
    half transparent), boxes and readable labels."""
    scale = max(1.0, MIN_SIDE / min(image.shape[1:]))
    if scale > 1:
        size = [round(image.shape[1] * scale), round(image.shape[2] * scale)]
        image, boxes = TF.resize(image, size, antialias=True), boxes * scale
        if masks is not None:
            masks = TF.resize(masks.to(torch.uint8), size, interpolation=TF.InterpolationMode.NEAREST).bool()
    if masks is not None and len(masks):
        image = draw_segmentation_masks(image, masks, alpha=0.45, colors=colours)
    if not len(boxes):  # nothing to draw (torchvision would warn that there is nothing)
        return image
    return draw_bounding_boxes(image, boxes, labels=labels, colors=colours, width=2, font=_font(),
                               font_size=FONT_SIZE, label_colors="black", fill_labels=True)


def _font() -> str:
    """A TrueType font for the labels: matplotlib's DejaVu Sans, which every install has."""
    return font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans"))


def side_by_side(pictures: list[torch.Tensor]) -> torch.Tensor:
    """uint8 3xHxW pictures of any sizes in one row, each padded to the largest."""
    height = max(p.shape[1] for p in pictures)
    width = max(p.shape[2] for p in pictures)
    padded = [torch.nn.functional.pad(p, (0, width - p.shape[2], 0, height - p.shape[1]), value=255) for p in pictures]
    return make_grid(padded, nrow=len(padded), padding=4, pad_value=255)
