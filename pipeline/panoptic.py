"""COCO panoptic format: a PNG per image whose colours are segment ids (id = R + 256 G + 256^2 B,
0: void, no segment) and, per image, a segments_info list ({id, category_id, iscrowd, bbox,
area}) in a JSON file (`annotations`, one per image, and `categories` with `isthing`).

Bulk detection writes one PNG per image under OUTPUT/_panoptic/ (png_name) and the image's
{file_name, segments_info} in the row's `panoptic` column; the ground truth is read here with its
problems counted and named (a PNG that cannot be read, colours that no segment of its JSON has),
never failing on them.
"""
from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

import storage as uris

from .predictions import PANOPTIC_FOLDER

VOID = 0
MAX_NAMED = 10  # problems named in a report, by example; all of them are counted


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """Segment ids [H,W] as COCO panoptic's PNG colours [H,W,3] uint8."""
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def png_bytes(id_map: np.ndarray) -> bytes:
    """Segment ids [H,W] as a COCO panoptic PNG."""
    buffer = io.BytesIO()
    Image.fromarray(id_to_rgb(id_map)).save(buffer, format="PNG")
    return buffer.getvalue()


def read_png(data: bytes) -> np.ndarray:
    """A COCO panoptic PNG's segment ids [H,W] int64."""
    with Image.open(io.BytesIO(data)) as image:
        return rgb_to_id(np.asarray(image.convert("RGB")))


def png_name(path: str) -> str:
    """The PNG of an input image: its stem (readable) and a hash of its whole path (unique
    across folders, and the same on every run, so a shard that runs again overwrites its own)."""
    return f"{PurePosixPath(path).stem}-{hashlib.sha256(path.encode()).hexdigest()[:10]}.png"


def write_pngs(output: str, paths: list[str], pngs: list[bytes | None]) -> int:
    """Write the PNGs of the images that have one under OUTPUT/_panoptic/; returns how many."""
    todo = [(uris.join(output, PANOPTIC_FOLDER, png_name(p)), data) for p, data in zip(paths, pngs) if data is not None]
    with ThreadPoolExecutor(16) as pool:  # one PUT per file on S3: in parallel
        list(pool.map(lambda item: uris.write_bytes(*item), todo))
    return len(todo)


def segment_problems(ids: np.ndarray, segments: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(kind, reason) for each way an id map and its segments_info disagree."""
    known = {s["id"] for s in segments}
    present = set(np.unique(ids).tolist()) - {VOID}
    problems = []
    if present - known:
        problems.append(("png_id_not_in_segments_info",
                         f"PNG ids {sorted(present - known)[:5]} not in segments_info (scored as void)"))
    if known - present:
        problems.append(("segment_not_in_png", f"segments_info ids {sorted(known - present)[:5]} absent from the PNG"))
    return problems


@dataclass
class Problems:
    """Problems by kind, and the first few named."""
    counts: Counter = field(default_factory=Counter)
    named: list[str] = field(default_factory=list)

    def add(self, kind: str, where: str, reason: str) -> None:
        self.counts[kind] += 1
        if len(self.named) < MAX_NAMED:
            self.named.append(f"{where}: {reason}")

    def report(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "examples": list(self.named)}


@dataclass
class PanopticGroundTruth:
    """A COCO panoptic annotation file: its images by id and file name, each image's
    annotation, the categories by id, and where the PNGs are."""
    annotation_uri: str
    folder: str
    categories: dict[int, dict[str, Any]]
    annotations: dict[int, dict[str, Any]]  # image id -> {file_name, segments_info}
    image_names: dict[str, int]  # image file name -> id

    def ids(self, image_id: int, problems: Problems) -> np.ndarray | None:
        """The image's segment ids, with colours its segments_info lacks made void; None (and a
        problem) where the PNG cannot be read."""
        annotation = self.annotations[image_id]
        where = f"{self.annotation_uri} image {image_id} ({annotation['file_name']})"
        try:
            ids = read_png(uris.read_bytes(uris.join(self.folder, annotation["file_name"])))
        except (OSError, ValueError) as e:
            problems.add("unreadable_png", where, f"{type(e).__name__}: {e}")
            return None
        for kind, reason in segment_problems(ids, annotation["segments_info"]):
            problems.add(kind, where, reason)
        known = np.array([s["id"] for s in annotation["segments_info"]], np.int64)
        return np.where(np.isin(ids, known), ids, VOID)


def load_panoptic(annotation_uri: str, folder: str | None = None) -> PanopticGroundTruth:
    """Read a COCO panoptic JSON (PNG folder: `folder`, default the JSON's path without .json,
    as panopticapi has it); a record missing a field it needs is named in the error."""
    data = json.loads(uris.read_bytes(annotation_uri))
    folder = folder or annotation_uri.removesuffix(".json")
    where = annotation_uri

    def need(record: Any, keys: tuple[str, ...], what: str) -> None:
        if not isinstance(record, dict) or any(k not in record for k in keys):
            raise ValueError(f"{where}: {what} lacks one of {keys}: {str(record)[:120]}")

    if not isinstance(data, dict) or not all(k in data for k in ("images", "annotations", "categories")):
        raise ValueError(f"{where}: not a COCO panoptic file (needs images, annotations and categories)")
    for k, c in enumerate(data["categories"]):
        need(c, ("id", "isthing"), f"categories[{k}]")
    for k, image in enumerate(data["images"]):
        need(image, ("id", "file_name"), f"images[{k}]")
    categories = {int(c["id"]): c for c in data["categories"]}
    annotations = {}
    for k, annotation in enumerate(data["annotations"]):
        need(annotation, ("image_id", "file_name", "segments_info"), f"annotations[{k}]")
        for j, segment in enumerate(annotation["segments_info"]):
            need(segment, ("id", "category_id"), f"annotations[{k}].segments_info[{j}]")
            if segment["category_id"] not in categories:
                raise ValueError(f"{where}: annotations[{k}].segments_info[{j}] has category {segment['category_id']}, "
                                 "not one of the file's categories")
        annotations[int(annotation["image_id"])] = annotation
    names = {PurePosixPath(image["file_name"]).name: int(image["id"]) for image in data["images"]}
    return PanopticGroundTruth(annotation_uri, folder, categories, annotations, names)
