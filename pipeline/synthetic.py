"""A COCO-format synthetic shapes dataset that a small DETR can learn.

Filled shapes of several classes on cluttered backgrounds (gradient, noise, distractor
strokes), JPEG files plus COCO annotation JSON. Category ids are deliberately
non-contiguous so id-mapping bugs show. Deterministic for a seed: each image has its own
random stream derived from (seed, split, index).

Each object's `segmentation` is exact: the generator drew it. It is the shape's visible part
(a later shape painted over an earlier one takes those pixels), as compressed RLE, and `area`
is its pixel count; `bbox` is the whole shape's extent.

With `stuff`, the background is two stuff regions (sky above a wavy horizon, ground below; COCO
panoptic's `isthing` 0) annotated like objects (their visible pixels, their extent), and each
split also gets its panoptic ground truth: annotations/panoptic_SPLIT.json and a PNG per image
in annotations/panoptic_SPLIT/ (pipeline/panoptic.py).
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

import storage as uris

from .masks import decode, encode
from .options import at_least, check, option, shared
from .panoptic import png_bytes

# name -> category id (non-contiguous on purpose)
CATEGORIES = {"circle": 2, "square": 5, "triangle": 9, "cross": 11}
MIN_SIDE = 16  # px: room for a shape
STUFF = {"sky": 20, "ground": 21}  # with SyntheticConfig.stuff: the background's regions
SPLIT_SALT = {"train": 0, "val": 1}


@dataclass(frozen=True)
class SyntheticConfig:
    min_side: int = option(96, check=at_least(MIN_SIDE), help="smallest image side (px); sides are drawn "
                           "uniformly between it and --max-side")
    max_side: int = option(320, check=at_least(MIN_SIDE), help="largest image side (px)")
    max_objects: int = option(6, check=at_least(0), help="shapes per image: 0..this")
    min_object: int = 14  # shape size in px
    max_object: int = 72
    max_overlap_iou: float = 0.35  # placements overlapping more are re-drawn
    jpeg_quality: int = 90
    stuff: bool = option(False, help="a background of stuff regions (sky, ground), also annotated, and panoptic "
                         "ground truth")

    def __post_init__(self) -> None:
        check(self)
        if self.max_side < self.min_side:
            raise ValueError(f"--max-side {self.max_side} is below --min-side {self.min_side}")


@dataclass(frozen=True)
class MakeSyntheticConfig:
    """The options of jobs/make_synthetic.py: where, how many, and the images' SyntheticConfig."""
    out: str = option(path=True, help="output folder or s3:// prefix")
    train: int = option(200, check=at_least(0), help="training images")
    val: int = option(50, check=at_least(0), help="validation images")
    seed: int = option(0, help="same seed, same dataset")
    min_side: int = shared(SyntheticConfig, "min_side")
    max_side: int = shared(SyntheticConfig, "max_side")
    max_objects: int = shared(SyntheticConfig, "max_objects")
    stuff: bool = shared(SyntheticConfig, "stuff")

    def __post_init__(self) -> None:
        check(self)
        self.images()  # the images' own checks

    def images(self) -> SyntheticConfig:
        return SyntheticConfig(min_side=self.min_side, max_side=self.max_side, max_objects=self.max_objects,
                               stuff=self.stuff)


def _shape_points(kind: str, cx: float, cy: float, size: float, angle: float) -> list[tuple[float, float]]:
    half = size / 2
    if kind == "triangle":
        return [(cx + half * math.cos(angle + k * 2 * math.pi / 3), cy + half * math.sin(angle + k * 2 * math.pi / 3)) for k in range(3)]
    arm = half / 3  # cross: a plus sign of bar width 2/3 * half
    return [
        (cx - arm, cy - half), (cx + arm, cy - half), (cx + arm, cy - arm), (cx + half, cy - arm),
        (cx + half, cy + arm), (cx + arm, cy + arm), (cx + arm, cy + half), (cx - arm, cy + half),
        (cx - arm, cy + arm), (cx - half, cy + arm), (cx - half, cy - arm), (cx - arm, cy - arm),
    ]


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, size: float, angle: float, fill) -> None:
    half = size / 2
    if kind == "circle":
        draw.ellipse([cx - half, cy - half, cx + half, cy + half], fill=fill)
    elif kind == "square":
        draw.rectangle([cx - half, cy - half, cx + half, cy + half], fill=fill)
    else:
        draw.polygon(_shape_points(kind, cx, cy, size, angle), fill=fill)


def _background(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    """Two-colour gradient + noise + distractor strokes (lines and arcs, not of any class)."""
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = np.linspace(0, 1, width)[None, :, None] if rng.random() < 0.5 else np.linspace(0, 1, height)[:, None, None]
    pixels = a * (1 - t) + b * t + rng.normal(0, rng.uniform(4, 20), (height, width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(0, 8)):
        x0, x1 = rng.uniform(0, width, 2)
        y0, y1 = rng.uniform(0, height, 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.line([x0, y0, x1, y1], fill=colour, width=int(rng.integers(1, 4)))
        else:
            box = [min(x0, x1), min(y0, y1), max(x0, x1) + 1, max(y0, y1) + 1]
            draw.arc(box, 0, int(rng.integers(30, 300)), fill=colour, width=2)
    return image


def _stuff_background(rng: np.random.Generator, height: int, width: int) -> tuple[Image.Image, np.ndarray]:
    """Sky (a smooth bluish gradient) above a wavy horizon, ground (textured greens and browns)
    below; returns the image and the sky's mask."""
    x = np.arange(width)
    horizon = height * rng.uniform(0.3, 0.7) + height * rng.uniform(0.02, 0.1) * np.sin(
        2 * np.pi * x / (width * rng.uniform(0.5, 2.0)) + rng.uniform(0, 2 * np.pi))
    sky = np.arange(height)[:, None] < horizon[None, :]
    top, bottom = rng.uniform([40, 90, 170], [120, 170, 255]), rng.uniform([150, 190, 220], [210, 230, 255])
    t = np.linspace(0, 1, height)[:, None, None]
    sky_pixels = top * (1 - t) + bottom * t + rng.normal(0, 3, (height, width, 3))
    ground_colour = rng.uniform([40, 70, 20], [140, 140, 60])
    ground_pixels = ground_colour + rng.normal(0, rng.uniform(15, 30), (height, width, 3))
    pixels = np.where(sky[..., None], sky_pixels, ground_pixels)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), sky


def _iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def make_image(seed: int, split: str, index: int, config: SyntheticConfig) -> tuple[bytes, int, int, list[dict]]:
    """One JPEG and its objects: (jpeg bytes, width, height, [{category_id, bbox, segmentation, area}])."""
    rng = np.random.default_rng([seed, SPLIT_SALT[split], index])
    width, height = (int(v) for v in rng.integers(config.min_side, config.max_side + 1, 2))
    if config.stuff:
        image, sky = _stuff_background(rng, height, width)
    else:
        image = _background(rng, height, width)
    draw = ImageDraw.Draw(image)
    objects: list[dict] = []
    masks: list[np.ndarray] = []
    names = list(CATEGORIES)
    for _ in range(int(rng.integers(0, config.max_objects + 1))):
        for _attempt in range(20):
            size = float(rng.uniform(config.min_object, min(config.max_object, 0.6 * min(width, height))))
            cx, cy = rng.uniform(size / 2, width - size / 2), rng.uniform(size / 2, height - size / 2)
            kind = names[int(rng.integers(len(names)))]
            angle = float(rng.uniform(0, 2 * math.pi))
            mask = Image.new("L", (width, height))
            _draw_shape(ImageDraw.Draw(mask), kind, cx, cy, size, angle, 255)
            box = mask.getbbox()
            if box is None:  # drawn outside the image: draw another
                continue
            left, top, right, bottom = box
            bbox = [float(left), float(top), float(right - left), float(bottom - top)]
            if all(_iou(bbox, o["bbox"]) <= config.max_overlap_iou for o in objects):
                break
        else:
            continue
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        _draw_shape(draw, kind, cx, cy, size, angle, colour)
        masks.append(np.asarray(mask) > 0)
        objects.append({"category_id": CATEGORIES[kind], "bbox": bbox})
    covered = np.zeros((height, width), bool)
    for obj, mask in reversed(list(zip(objects, masks))):  # the last drawn is on top
        visible = mask & ~covered
        covered |= mask
        obj["segmentation"] = {"size": [height, width], "counts": encode(visible[None])[0]}
        obj["area"] = float(np.count_nonzero(visible))
    if config.stuff:
        for name, region in (("sky", sky), ("ground", ~sky)):
            visible = region & ~covered
            if visible.any():
                objects.append({"category_id": STUFF[name], "bbox": _extent(visible),
                                "segmentation": {"size": [height, width], "counts": encode(visible[None])[0]},
                                "area": float(np.count_nonzero(visible))})
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=config.jpeg_quality)
    return buffer.getvalue(), width, height, objects


def _extent(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min())]


def panoptic_ids(objects: list[dict], width: int, height: int) -> np.ndarray:
    """The segment id map of an image's objects (object k has id k + 1; they do not overlap)."""
    ids = np.zeros((height, width), np.int64)
    for k, obj in enumerate(objects):
        ids[decode([obj["segmentation"]], width, height)[0] > 0] = k + 1
    return ids


def categories(stuff: bool) -> list[dict]:
    """The categories (with `isthing` when there is stuff)."""
    things = [{"id": cid, "name": name, "supercategory": "shape"} for name, cid in CATEGORIES.items()]
    if not stuff:
        return things
    return ([{**c, "isthing": 1} for c in things]
            + [{"id": cid, "name": name, "supercategory": "background", "isthing": 0} for name, cid in STUFF.items()])


def write_split(out: str, split: str, count: int, seed: int, config: SyntheticConfig) -> str:
    """Write OUT/split/*.jpg and OUT/annotations/split.json; return the annotation URI."""
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    panoptic: list[dict[str, Any]] = []
    for index in range(count):
        data, width, height, objects = make_image(seed, split, index, config)
        file_name = f"{index:06d}.jpg"
        uris.write_bytes(uris.join(out, split, file_name), data)
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for obj in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "iscrowd": 0, **obj})
        if config.stuff:
            png = f"{index:06d}.png"
            uris.write_bytes(uris.join(out, "annotations", f"panoptic_{split}", png),
                             png_bytes(panoptic_ids(objects, width, height)))
            segments = [{"id": k + 1, "category_id": o["category_id"], "iscrowd": 0, "bbox": o["bbox"],
                         "area": o["area"]} for k, o in enumerate(objects) if o["area"]]  # not a shape hidden whole
            panoptic.append({"image_id": image_id, "file_name": png, "segments_info": segments})
    coco = {"images": images, "annotations": annotations, "categories": categories(config.stuff)}
    annotation_uri = uris.join(out, "annotations", f"{split}.json")
    uris.write_bytes(annotation_uri, json.dumps(coco).encode())
    if config.stuff:
        uris.write_bytes(uris.join(out, "annotations", f"panoptic_{split}.json"), json.dumps(
            {"images": images, "annotations": panoptic, "categories": categories(True)}).encode())
    return annotation_uri


def make_synthetic(out: str, train: int, val: int, seed: int = 0, config: SyntheticConfig = SyntheticConfig()) -> dict:
    """Write the train and val splits under OUT (local or s3://); return a summary."""
    summary = {"out": out, "seed": seed}
    for split, count in (("train", train), ("val", val)):
        summary[f"{split}_annotations"] = write_split(out, split, count, seed, config)
        summary[f"{split}_images"] = uris.join(out, split)
        summary[f"{split}_count"] = count
        if config.stuff:
            summary[f"{split}_panoptic"] = uris.join(out, "annotations", f"panoptic_{split}.json")
    return summary
