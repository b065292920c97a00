"""Panoptic quality (PQ = SQ x RQ, Kirillov et al.), by panopticapi's rules, one image at a time.

Per image: a predicted and a ground-truth segment of the same category match when their IoU
is above 0.5 (pixels the prediction puts on ground-truth void leave its union); a match is a
true positive adding its IoU, an unmatched ground-truth segment a false negative (crowd
regions never count), an unmatched prediction a false positive unless more than half of it
lies on void or on a crowd region of its category. Per category PQ = sum IoU / (TP + FP/2 +
FN/2), SQ = sum IoU / TP, RQ = TP / (TP + FP/2 + FN/2); All, Things and Stuff average them over
the categories that have any TP, FP or FN. Checked against hotcoco (tests/pipeline/evaluation/
test_panoptic.py).
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

import storage as uris

from ..panoptic import VOID, Problems, load_panoptic, read_png
from ..predictions import PANOPTIC_FOLDER

OFFSET = 2 ** 24  # id pairs as one integer: gt * OFFSET + prediction (ids are 24-bit colours)
GROUPS = {"All": None, "Things": True, "Stuff": False}


@dataclass
class CategoryCounts:
    iou: float = 0.0
    tp: int = 0
    fp: int = 0
    fn: int = 0


class PanopticQuality:
    """Accumulates images; `results()` gives PQ / SQ / RQ for All, Things and Stuff and per category."""

    def __init__(self, categories: dict[int, dict[str, Any]]):
        self.categories = categories
        self.counts: dict[int, CategoryCounts] = defaultdict(CategoryCounts)

    def add(self, gt_ids: np.ndarray, gt_segments: list[dict[str, Any]], pred_ids: np.ndarray,
            pred_segments: list[dict[str, Any]]) -> None:
        """One image: id maps of the same size and their segments_info (a predicted id missing from
        pred_segments is void; a ground-truth segment's area is its JSON's where it has one)."""
        pairs, overlap = np.unique(gt_ids.astype(np.int64) * OFFSET + pred_ids, return_counts=True)
        intersection = dict(zip(zip((pairs // OFFSET).tolist(), (pairs % OFFSET).tolist()), overlap.tolist()))
        pred_area: defaultdict[int, int] = defaultdict(int)
        gt_area: defaultdict[int, int] = defaultdict(int)
        for (g, p), n in intersection.items():
            pred_area[p] += n
            gt_area[g] += n
        gt = {s["id"]: s for s in gt_segments}
        pred = {s["id"]: s for s in pred_segments if pred_area[s["id"]]}  # a segment of no pixel is none
        matched_gt, matched_pred = set(), set()
        for (g, p), n in intersection.items():
            if g not in gt or p not in pred or gt[g].get("iscrowd", 0) == 1:
                continue
            if gt[g]["category_id"] != pred[p]["category_id"]:
                continue
            union = pred_area[p] + gt[g].get("area", gt_area[g]) - n - intersection.get((VOID, p), 0)
            iou = n / union
            if iou > 0.5:
                counts = self.counts[gt[g]["category_id"]]
                counts.tp += 1
                counts.iou += iou
                matched_gt.add(g)
                matched_pred.add(p)
        crowd = {}  # category -> its crowd segment (panopticapi keeps the last of each category)
        for g, segment in gt.items():
            if g in matched_gt:
                continue
            if segment.get("iscrowd", 0) == 1:
                crowd[segment["category_id"]] = g
                continue
            self.counts[segment["category_id"]].fn += 1
        for p, segment in pred.items():
            if p in matched_pred:
                continue
            ignored = intersection.get((VOID, p), 0)
            if segment["category_id"] in crowd:
                ignored += intersection.get((crowd[segment["category_id"]], p), 0)
            if ignored / pred_area[p] > 0.5:
                continue
            self.counts[segment["category_id"]].fp += 1

    def results(self) -> dict[str, Any]:
        """{"All" | "Things" | "Stuff": {pq, sq, rq, n}, "per_category": {id: {pq, sq, rq, tp, fp, fn}}};
        a group with no category counted has None for pq, sq and rq."""
        per_category = {}
        for category_id in sorted(self.categories):
            c = self.counts.get(category_id, CategoryCounts())
            denominator = c.tp + 0.5 * c.fp + 0.5 * c.fn
            per_category[category_id] = {
                "name": self.categories[category_id].get("name", str(category_id)),
                "pq": c.iou / denominator if denominator else None,
                "sq": c.iou / c.tp if c.tp else (0.0 if denominator else None),
                "rq": c.tp / denominator if denominator else None,
                "tp": c.tp, "fp": c.fp, "fn": c.fn,
            }
        results: dict[str, Any] = {}
        for group, things in GROUPS.items():
            rows = [per_category[k] for k, info in self.categories.items()
                    if per_category[k]["pq"] is not None and (things is None or (info["isthing"] == 1) == things)]
            results[group] = {key: sum(r[key] for r in rows) / len(rows) if rows else None
                              for key in ("pq", "sq", "rq")}
            results[group]["n"] = len(rows)
        results["per_category"] = per_category
        return results


# ---------------------------------------------------------------- a predictions table's PQ

METRICS = {"PQ": ("All", "pq"), "SQ": ("All", "sq"), "RQ": ("All", "rq"),
           "PQ_th": ("Things", "pq"), "SQ_th": ("Things", "sq"), "RQ_th": ("Things", "rq"),
           "PQ_st": ("Stuff", "pq"), "SQ_st": ("Stuff", "sq"), "RQ_st": ("Stuff", "rq")}
COLUMNS = ("path", "image_id", "panoptic")


class PanopticScorer:
    """PQ / SQ / RQ (All, Things, Stuff; per category) of predictions rows' panoptic segmentations
    (their JSON column and PNGs under `png_root`) against a COCO panoptic ground truth (PNG folder:
    `folder`, default the JSON's path without .json), a table of rows at a time (`add`), then
    `result()`. A ground-truth image without a prediction scores as an empty one (its segments
    are missed); what could not be used is counted and named in the report, never fatal."""

    def __init__(self, annotation_uri: str, folder: str | None, png_root: str) -> None:
        self.annotation_uri, self.root = annotation_uri, png_root
        self.gt = load_panoptic(annotation_uri, folder)
        self.quality = PanopticQuality(self.gt.categories)
        self.problems = Problems()
        self.scored: set[int] = set()
        self.unreadable: set[int] = set()  # ground-truth PNGs that cannot be read (each counted once): not scored
        self.unmatched = 0

    def add(self, table: pa.Table) -> None:
        gt = self.gt
        for row in table.select(list(COLUMNS)).to_pylist():
            image_id = row["image_id"] if row["image_id"] in gt.annotations else gt.image_names.get(
                PurePosixPath(row["path"]).name)
            if image_id is None or image_id in self.scored or image_id in self.unreadable or row["panoptic"] is None:
                self.unmatched += image_id is None
                continue
            gt_ids = gt.ids(image_id, self.problems)
            if gt_ids is None:
                self.unreadable.add(image_id)
                continue
            self.scored.add(image_id)
            prediction = json.loads(row["panoptic"])
            pred_ids = predicted_ids(self.root, prediction["file_name"], gt_ids.shape, row["path"], self.problems)
            segments = prediction["segments_info"] if pred_ids.any() else []
            self.quality.add(gt_ids, gt.annotations[image_id]["segments_info"], pred_ids, segments)

    def result(self) -> dict[str, Any]:
        gt = self.gt
        missing = [i for i in gt.annotations if i not in self.scored and i not in self.unreadable]
        for image_id in missing:  # no prediction: every segment missed
            gt_ids = gt.ids(image_id, self.problems)
            if gt_ids is not None:
                self.quality.add(gt_ids, gt.annotations[image_id]["segments_info"], np.zeros_like(gt_ids), [])
        results = self.quality.results()
        metrics = {name: results[group][key] for name, (group, key) in METRICS.items()}
        report = {"images": len(gt.annotations), "predicted": len(self.scored), "without_prediction": len(missing),
                  "rows_of_unknown_images": self.unmatched, "problems": self.problems.report()}
        return {"metrics": metrics, "groups": {g: results[g] for g in GROUPS},
                "per_category": results["per_category"], "report": report, "annotations": self.annotation_uri}


def png_root(predictions_uri: str) -> str:
    """The folder that holds a predictions table's panoptic PNG folder: the table's own, or a
    single file's parent."""
    single_file = uris.file_type(predictions_uri) == pafs.FileType.File
    return predictions_uri.rsplit("/", 1)[0] if single_file else predictions_uri


def predicted_ids(root: str, file_name: str, shape: tuple[int, ...], path: str, problems: Problems) -> np.ndarray:
    """A prediction's segment ids; all void (and a problem) where its PNG cannot be read or is
    not the ground truth's size."""
    try:
        ids = read_png(uris.read_bytes(uris.join(root, PANOPTIC_FOLDER, file_name)))
    except (OSError, ValueError) as e:
        problems.add("unreadable_prediction_png", path, f"{type(e).__name__}: {e}")
        return np.zeros(shape, np.int64)
    if ids.shape != shape:
        problems.add("prediction_size", path, f"PNG of {ids.shape[1]}x{ids.shape[0]}, the ground truth's is "
                                              f"{shape[1]}x{shape[0]}")
        return np.zeros(shape, np.int64)
    return ids
