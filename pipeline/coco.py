"""COCO-format annotations: read (local or s3://), validate, and turn into training records.

A malformed file fails fast with a CocoFormatError that names the offending record.
Boxes whose width or height is not positive once clipped to the image are dropped and
counted, as the reference implementation does; crowd boxes are left out of training.
An object's `segmentation` (polygons or RLE) is checked too: one that cannot be a mask of its
image (a polygon of fewer than 3 points, RLE of another size, points outside the image) is
counted and named, never fatal; mask training leaves that object out (CocoDataset.records).
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs

import storage as uris

from .masks import check_segmentation

REQUIRED = {
    "images": ("id", "file_name", "width", "height"),
    "annotations": ("id", "image_id", "category_id", "bbox"),
    "categories": ("id", "name"),
}


class CocoFormatError(ValueError):
    """An annotation file that cannot be used; the message names the record."""


@dataclass
class CocoDataset:
    annotation_uri: str
    image_root: str
    images: list[dict[str, Any]]
    categories: list[dict[str, Any]]
    raw: dict[str, Any]  # the file as read, for pycocotools
    boxes: dict[int, list[tuple[list[float], int]]] = field(default_factory=dict)  # image id -> [(xyxy, category)]
    crowd_boxes: int = 0  # ignored for training
    dropped_boxes: int = 0  # degenerate after clipping
    # image id -> each kept box's segmentation (None: absent or unusable), in the order of `boxes`
    segmentations: dict[int, list[Any]] = field(default_factory=dict)
    mask_problems: Counter = field(default_factory=Counter)  # unusable segmentations by reason
    mask_problem_records: list[str] = field(default_factory=list)  # the first few, named
    unsegmented: int = 0  # kept boxes without a segmentation

    @property
    def num_classes(self) -> int:
        """Classifier size: the largest category id + 1 (ids are the dataset's own)."""
        return max(c["id"] for c in self.categories) + 1

    @property
    def stuff_classes(self) -> tuple[int, ...]:
        """Category ids marked stuff (COCO panoptic's `isthing`: 0); none where no category says."""
        return tuple(sorted(c["id"] for c in self.categories if c.get("isthing", 1) == 0))

    def image_uri(self, image: dict[str, Any]) -> str:
        return uris.join(self.image_root, image["file_name"])

    def records(self, masks: bool = False) -> list[dict[str, Any]]:
        """One training record per image: uri, image id, original size, xyxy boxes, labels; with
        masks, each object's segmentation as JSON text (objects without a usable one left out)."""
        records = []
        for image in self.images:
            objects = list(zip(self.boxes.get(image["id"], []), self.segmentations.get(image["id"], [])))
            if masks:
                objects = [o for o in objects if o[1] is not None]
            record = {
                "path": self.image_uri(image),
                "image_id": image["id"],
                "width": image["width"],
                "height": image["height"],
                "boxes": [box for (box, _), _ in objects],
                "labels": [label for (_, label), _ in objects],
            }
            if masks:
                record["segmentations"] = [json.dumps(segmentation) for _, segmentation in objects]
            records.append(record)
        return records

    @property
    def usable_masks(self) -> int:
        return sum(s is not None for segmentations in self.segmentations.values() for s in segmentations)


def _describe(section: str, index: int, record: Any) -> str:
    rid = record.get("id") if isinstance(record, dict) else None
    return f"{section}[{index}]" + (f" (id {rid})" if rid is not None else "")


def _check_records(coco: dict, source: str) -> None:
    for section, keys in REQUIRED.items():
        records = coco.get(section)
        if not isinstance(records, list):
            raise CocoFormatError(f"{source}: top-level '{section}' must be a list")
        seen: set = set()
        for index, record in enumerate(records):
            where = f"{source}: {_describe(section, index, record)}"
            if not isinstance(record, dict):
                raise CocoFormatError(f"{where} is not an object")
            missing = [k for k in keys if k not in record]
            if missing:
                raise CocoFormatError(f"{where} lacks {missing}")
            if record["id"] in seen:
                raise CocoFormatError(f"{where} repeats the {section} id {record['id']}")
            seen.add(record["id"])


def parse_coco(coco: Any, source: str, image_root: str) -> CocoDataset:
    """Validate a decoded COCO dict and index its boxes by image."""
    if not isinstance(coco, dict):
        raise CocoFormatError(f"{source}: top level must be an object with images, annotations, categories")
    _check_records(coco, source)
    image_sizes = {img["id"]: (img["width"], img["height"]) for img in coco["images"]}
    for index, img in enumerate(coco["images"]):
        if not all(isinstance(img[k], int) and img[k] > 0 for k in ("width", "height")):
            raise CocoFormatError(f"{source}: {_describe('images', index, img)} has width/height that are not positive integers")
    category_ids = {c["id"] for c in coco["categories"]}
    if not category_ids:
        raise CocoFormatError(f"{source}: no categories declared")
    if any(not isinstance(c, int) or c < 0 for c in category_ids):
        raise CocoFormatError(f"{source}: category ids must be non-negative integers, got {sorted(category_ids, key=str)}")
    dataset = CocoDataset(source, image_root, coco["images"], coco["categories"], coco)
    for index, ann in enumerate(coco["annotations"]):
        where = f"{source}: {_describe('annotations', index, ann)}"
        if ann["image_id"] not in image_sizes:
            raise CocoFormatError(f"{where} refers to image_id {ann['image_id']}, which is not in images")
        if ann["category_id"] not in category_ids:
            raise CocoFormatError(f"{where} has category_id {ann['category_id']}, which is not declared in categories")
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise CocoFormatError(f"{where} has bbox {bbox!r}; expected [x, y, width, height]")
        if ann.get("iscrowd", 0):
            dataset.crowd_boxes += 1
            continue
        width, height = image_sizes[ann["image_id"]]
        x, y, w, h = bbox  # clip to the image as the reference does, then drop empty boxes
        x0, y0 = min(max(x, 0), width), min(max(y, 0), height)
        x1, y1 = min(max(x + w, 0), width), min(max(y + h, 0), height)
        if x1 <= x0 or y1 <= y0:
            dataset.dropped_boxes += 1
            continue
        dataset.boxes.setdefault(ann["image_id"], []).append(([x0, y0, x1, y1], ann["category_id"]))
        dataset.segmentations.setdefault(ann["image_id"], []).append(_segmentation(dataset, ann, where, width, height))
    return dataset


MASK_PROBLEMS_NAMED = 10


def _segmentation(dataset: CocoDataset, ann: dict[str, Any], where: str, width: int, height: int) -> Any:
    """The annotation's segmentation when usable as its mask, else None (counted, and named)."""
    if "segmentation" not in ann:
        dataset.unsegmented += 1
        return None
    problem = check_segmentation(ann["segmentation"], width, height)
    if problem is None:
        return ann["segmentation"]
    kind, reason = problem
    dataset.mask_problems[kind] += 1
    if len(dataset.mask_problem_records) < MASK_PROBLEMS_NAMED:
        dataset.mask_problem_records.append(f"{where}: {reason}")
    return None


def missing_image_files(dataset: CocoDataset) -> list[str]:
    """file_names of the images that are not under the image root (one listing of the root)."""
    fs, root = uris.resolve(dataset.image_root)
    try:
        listing = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    except FileNotFoundError:
        listing = []
    present = {info.path[len(root.rstrip("/")) + 1:] for info in listing if info.type == pafs.FileType.File}
    return [img["file_name"] for img in dataset.images if img["file_name"] not in present]


def load_coco(annotation_uri: str, image_root: str, check_files: bool = True) -> CocoDataset:
    """Read and validate a COCO annotation file (local or s3://) for images under image_root."""
    try:
        coco = json.loads(uris.read_bytes(annotation_uri))
    except json.JSONDecodeError as e:
        raise CocoFormatError(f"{annotation_uri} is not valid JSON: {e}") from e
    dataset = parse_coco(coco, annotation_uri, image_root)
    if check_files:
        missing = missing_image_files(dataset)
        if missing:
            raise CocoFormatError(
                f"{annotation_uri}: {len(missing)} image file(s) missing under {image_root}, e.g. {missing[:5]}"
            )
    return dataset
