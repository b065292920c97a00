"""What is kept of a predictions table's rows for scoring, and what is counted when left out.

One pass over the rows (`Rows.add`, batch by batch) keeps the box detections and, where the rows
carry masks, the same detections' masks, by one rule: rows matched to a ground-truth image (by
image_id, else by the file name that ends their path); detections of declared categories with
finite boxes and scores and no negative width or height; at most max_dets per image, the top by
score (ties: the row's own order), as COCO's server keeps. Rows and detections left out are
counted and named in the report, never silently dropped. Each image's top max_dets are kept as
the rows stream past, so memory is one batch plus what is kept.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..predictions import error_kinds
from .scoring import CocoScorer, by_image_and_score


class Rows:
    """The detections (and masks) kept of the rows added so far, and the counts of what was not."""

    def __init__(self, scorer: CocoScorer) -> None:
        self.scorer = scorer
        self.counts: Counter = Counter()
        self.errors: Counter = Counter()
        self.unknown_paths: list[str] = []
        self.unknown_categories: set[int] = set()
        self.kept: list[np.ndarray] = []
        self.matched: list[np.ndarray] = []
        self.masks: list[dict[str, Any]] = []  # COCO segm results of the kept detections that have a mask
        self.with_masks = False  # whether any row carried masks (a model with the mask head)
        self.with_panoptic = False  # whether any row carried a panoptic segmentation

    def add(self, table: pa.Table) -> None:
        image_ids = match_image_ids(table, self.scorer)
        known = pc.invert(pc.is_null(image_ids))
        self.counts["rows"] += table.num_rows
        self.errors.update(error_kinds(table["error"]))
        unknown = table.num_rows - (pc.sum(known).as_py() or 0)
        self.counts["unknown_rows"] += unknown
        if unknown and len(self.unknown_paths) < 10:
            self.unknown_paths += table.filter(pc.invert(known))["path"].to_pylist()[:10 - len(self.unknown_paths)]
        self.with_panoptic |= has_values(table, "panoptic")
        table = table.append_column("gt_image_id", image_ids).filter(known)
        self.matched.append(table["gt_image_id"].to_numpy())
        detections, dropped = kept_detections(table, self.scorer)
        self.unknown_categories.update(dropped.pop("categories"))
        self.counts.update(dropped)
        self.kept.append(detections[:, :7])
        if has_values(table, "masks"):
            self.with_masks = True
            self.masks += mask_results(table, detections)

    def boxes(self) -> tuple[np.ndarray, dict[str, Any]]:
        """[N,7] detections (image_id, x, y, w, h, score, category_id) and the report of what did
        not match. A ground-truth image with two rows is a ValueError."""
        matched_ids = np.concatenate(self.matched) if self.matched else np.zeros(0, np.int64)
        duplicated = len(matched_ids) - len(np.unique(matched_ids))
        if duplicated:
            raise ValueError(f"{duplicated} ground-truth image(s) have more than one prediction row")
        missed = np.setdiff1d(self.scorer.image_ids, matched_ids)
        detections = np.concatenate(self.kept) if self.kept else np.zeros((0, 7))
        counts = self.counts
        report = {"rows": counts["rows"], "error_rows": dict(self.errors), "unknown_rows": counts["unknown_rows"],
                  "unknown_paths": self.unknown_paths, "missed_images": len(missed),
                  "missed_image_ids": missed[:10].tolist(),
                  "invalid_box_detections": counts["invalid_box_detections"],
                  "unknown_category_detections": counts["unknown_category_detections"],
                  "unknown_category_ids": sorted(self.unknown_categories)[:20],
                  "truncated_detections": counts["truncated_detections"], "detections": len(detections)}
        report["warnings"] = report_warnings(report, self.scorer.max_dets)
        return detections, report


def detections_array(batches: Any, scorer: CocoScorer) -> tuple[np.ndarray, dict[str, Any]]:
    """The kept [N,7] detections of predictions batches and their report (Rows, in one call)."""
    rows = Rows(scorer)
    for batch in batches:
        rows.add(batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch]))
    return rows.boxes()


def kept_detections(table: pa.Table, scorer: CocoScorer) -> tuple[np.ndarray, dict[str, Any]]:
    """The kept detections of matched rows as [N,8] (the 7 scored values, then the detection's
    index among the table's detections, which finds its mask), each image's best first; and the
    counts of those dropped."""
    counts = pc.list_value_length(table["scores"]).fill_null(0).to_numpy(zero_copy_only=False)
    rows = np.repeat(np.arange(table.num_rows), counts)
    boxes = _flat(table["boxes"]).reshape(-1, 4).astype(np.float64)
    scores = _flat(table["scores"]).astype(np.float64)
    labels = _flat(table["labels"]).astype(np.int64)
    ids = table["gt_image_id"].to_numpy()[rows].astype(np.int64)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    detections = np.column_stack([ids, xywh, scores, labels, np.arange(len(ids))])

    valid = np.isfinite(detections).all(axis=1) & (xywh[:, 2] >= 0) & (xywh[:, 3] >= 0)
    known_category = np.isin(labels, scorer.category_ids)
    dropped = {"invalid_box_detections": int((~valid).sum()),
               "unknown_category_detections": int((valid & ~known_category).sum()),
               "categories": set(labels[valid & ~known_category].tolist())}
    detections, dropped["truncated_detections"] = top_per_image(detections[valid & known_category], scorer.max_dets)
    return detections, dropped


def mask_results(table: pa.Table, detections: np.ndarray) -> list[dict[str, Any]]:
    """COCO segm results ({image_id, category_id, score, segmentation: RLE at the image's size})
    of the kept detections (kept_detections' [N,8]) that have a mask, in their order."""
    counts = pc.list_value_length(table["scores"]).fill_null(0).to_numpy(zero_copy_only=False)
    masks: list[str | None] = []
    for row_masks, count in zip(table["masks"].to_pylist(), counts.tolist()):
        masks += row_masks if row_masks and len(row_masks) == count else [None] * count
    rows = np.repeat(np.arange(table.num_rows), counts)
    heights, widths = table["height"].to_pylist(), table["width"].to_pylist()
    results = []
    for image_id, score, category, index in detections[:, [0, 5, 6, 7]].tolist():
        mask, row = masks[int(index)], rows[int(index)]
        if mask is not None:
            results.append({"image_id": int(image_id), "category_id": int(category), "score": score,
                            "segmentation": {"size": [heights[row], widths[row]], "counts": mask}})
    return results


def has_values(table: pa.Table, column: str) -> bool:
    """Whether any row has a value in `column` (masks, panoptic: a table written before they were
    has no such column)."""
    return column in table.column_names and table[column].null_count < table.num_rows


def report_warnings(report: dict[str, Any], max_dets: int) -> list[str]:
    """What a person must know before trusting the stats, one sentence each."""
    said = []
    if not report["rows"]:
        said.append("the predictions hold no rows: every ground-truth image is scored as missed (AP 0)")
    elif not report["detections"]:
        said.append("no detection was scored: AP is 0")
    if report["missed_images"]:
        said.append(f"{report['missed_images']} ground-truth image(s) have no prediction row and are scored as "
                    f"missed, e.g. ids {report['missed_image_ids'][:5]}")
    if report["unknown_rows"]:
        said.append(f"{report['unknown_rows']} row(s) name images that are not in the annotations and were left "
                    f"out, e.g. {report['unknown_paths'][:3]}")
    if report["error_rows"]:
        said.append(f"{sum(report['error_rows'].values())} row(s) are errors (no detections): {report['error_rows']}")
    if report["invalid_box_detections"]:
        said.append(f"{report['invalid_box_detections']} detection(s) with a box or score that is not finite or "
                    "a negative width/height were dropped")
    if report["unknown_category_detections"]:
        said.append(f"{report['unknown_category_detections']} detection(s) of categories the annotations do not "
                    f"declare were dropped: ids {report['unknown_category_ids']}")
    if report["truncated_detections"]:
        said.append(f"{report['truncated_detections']} detection(s) beyond the top {max_dets} of their image "
                    "were dropped (--max-dets)")
    return said


def top_per_image(detections: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """At most k detections per image, the highest scores (ties: earlier first)."""
    ranked = by_image_and_score(detections)
    starts = np.searchsorted(ranked[:, 0], ranked[:, 0], side="left")
    keep = np.arange(len(ranked)) - starts < k
    return ranked[keep], int((~keep).sum())


def match_image_ids(table: pa.Table, scorer: CocoScorer) -> pa.ChunkedArray:
    """Each row's ground-truth image id: its image_id when set (null if unknown), else the
    image whose file_name ends its path; null when nothing matches."""
    image_id = table["image_id"]
    by_id = pc.if_else(pc.is_in(image_id, value_set=scorer.known_ids), image_id,
                       pa.scalar(None, pa.int64()))
    unset = pc.is_null(image_id)
    if not table.num_rows or not pc.any(unset).as_py():
        return by_id
    by_name = [_match_name(path, scorer.file_names) if need else None
               for path, need in zip(table["path"].to_pylist(), unset.to_pylist())]
    return pc.coalesce(by_id, pa.array(by_name, pa.int64()))


def _match_name(path: str, names: dict[str, int]) -> int | None:
    """The id of the file_name that is the longest suffix of path (whole path components)."""
    parts = path.split("/")
    for i in range(len(parts)):
        found = names.get("/".join(parts[i:]))
        if found is not None:
            return found
    return None


def _flat(column: pa.ChunkedArray) -> np.ndarray:
    values = pc.list_flatten(column)
    if pa.types.is_fixed_size_list(values.type):
        values = pc.list_flatten(values)
    return values.to_numpy(zero_copy_only=False) if len(values) else np.zeros(0)
