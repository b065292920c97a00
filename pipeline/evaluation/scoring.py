"""COCO bbox scoring of a predictions table, streamed from Parquet through Arrow/NumPy into
pycocotools (the reference), hotcoco (the default: Rust, the same numbers) or faster-coco-eval (C++);
mask (segm) scoring of its masks column, when it has one, by the same rules; and, given COCO
panoptic annotations, PQ of its panoptic segmentations (panoptic_quality.py).

Traps handled (measured on the COCO oracle the tests use): pycocotools breaks score ties
by input order, so detections are ordered by image id, then score descending, stably,
keeping each row's own order (one row = one image, so the order rows arrive in from
part files cannot matter); loadRes([]) fails, so an empty result set is built directly;
detections on unknown images or categories, and boxes that are not finite or have a
negative size, are counted and dropped, never silently ignored; at most max_dets
detections per image (the top by score), as COCO's server keeps. The 12 stats are computed
from the evaluator's precision / recall arrays with max_dets as the last cap, by the rule
of pycocotools' summarize() (which fixes that cap at 100).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from model import uri as uris
from model.contract import PAPER_CONTRACT

from ..coco import load_coco
from ..predictions import SCORE_THRESHOLD, error_kinds, prediction_batches, run_metadata
from .backends import BACKENDS, DEFAULT_BACKEND
from .labels import check_label_names
from .panoptic_quality import score_panoptic_files

MAX_DETECTIONS = 100  # COCO's rule
BATCH_ROWS = 256  # rows (images) converted at a time: memory is one batch plus what is kept
COLUMNS = ("path", "image_id", "boxes", "scores", "labels", "error")


def stat_names(max_dets: int = MAX_DETECTIONS) -> tuple[str, ...]:
    """The 12 stats; the third AR is at the detection cap (AR100 under COCO's rule)."""
    return ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", f"AR{max_dets}", "ARs", "ARm", "ARl")


STAT_NAMES = stat_names()


def check_max_dets(max_dets: int) -> int:
    """The cap itself: above 10 (COCO's caps are 1, 10 and it)."""
    if max_dets <= 10:
        raise ValueError(f"max_dets must be an integer above 10 (the caps are 1, 10 and it), got {max_dets}")
    return max_dets


def max_dets_arg(text: str) -> int:
    """--max-dets, checked by the argument parser."""
    try:
        return check_max_dets(int(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).replace("max_dets must be", "expected")) from None


class CocoScorer:
    """A ground truth indexed by one backend, scoring detections [N,7] = (image_id, x, y, w, h,
    score, category_id) with at most max_dets per image."""

    def __init__(self, coco: dict[str, Any], backend: str = DEFAULT_BACKEND, max_dets: int = MAX_DETECTIONS):
        if backend not in BACKENDS:
            raise ValueError(f"unknown scoring backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        self.backend, self.max_dets, self.coco = backend, check_max_dets(max_dets), coco
        self.gt = self._index(coco)
        self.image_ids = np.array(sorted(self.gt.getImgIds()), np.int64)
        self.known_ids = pa.array(self.image_ids)  # the value set each batch's ids are matched against
        self.category_ids = np.array(sorted(self.gt.getCatIds()), np.int64)
        self._names: dict[str, int] | None = None

    def _classes(self):
        if self.backend == "pycocotools":
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval
            return COCO, COCOeval
        if self.backend == "hotcoco":
            from hotcoco import COCO, COCOeval
            return COCO, COCOeval
        from faster_coco_eval import COCO, COCOeval_faster
        return COCO, COCOeval_faster

    def _index(self, dataset: dict[str, Any]):
        if self.backend == "hotcoco":
            return self._classes()[0](dataset)
        coco = self._classes()[0]()
        coco.dataset = dataset
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco

    @property
    def file_names(self) -> dict[str, int]:
        if self._names is None:
            self._names = {img["file_name"]: img["id"] for img in self.coco["images"]}
        return self._names

    def _results(self, detections: np.ndarray):
        """The backend's index of the detections, as loadRes builds it."""
        if self.backend in ("pycocotools", "hotcoco") and len(detections):
            with contextlib.redirect_stdout(io.StringIO()):
                return self.gt.loadRes(detections)  # the reference path, unchanged; hotcoco's in Rust
        # loadRes([]) raises in pycocotools; faster-coco-eval's loadRes spends most of its time in
        # a Python loop per row: build the same records (loadRes's fields) directly.
        ids, categories = detections[:, 0].astype(np.int64).tolist(), detections[:, 6].astype(np.int64).tolist()
        x, y, w, h, scores = detections[:, 1:6].T.tolist()
        annotations = [{"id": k, "image_id": i, "category_id": c, "bbox": [bx, by, bw, bh], "area": bw * bh,
                        "score": s, "iscrowd": 0}
                       for k, (i, c, bx, by, bw, bh, s) in enumerate(zip(ids, categories, x, y, w, h, scores), 1)]
        return self._index({"images": self.coco["images"], "categories": self.coco["categories"],
                            "annotations": annotations})

    def cocoeval(self, detections: np.ndarray):
        """The backend's COCOeval (bbox) after evaluate and accumulate."""
        detections = by_image_and_score(np.asarray(detections, dtype=np.float64).reshape(-1, 7))
        with contextlib.redirect_stdout(io.StringIO()):
            return self._evaluate(self._results(detections), "bbox")

    def cocoeval_masks(self, results: list[dict[str, Any]]):
        """The backend's COCOeval (segm) of mask results ({image_id, category_id, segmentation
        (RLE), score}, each image's in score order), after evaluate and accumulate."""
        with contextlib.redirect_stdout(io.StringIO()):
            index = (self.gt.loadRes(results) if results else
                     self._index({"images": self.coco["images"], "categories": self.coco["categories"],
                                  "annotations": []}))
            return self._evaluate(index, "segm")

    def _evaluate(self, results, iou_type: str):
        evaluator_class = self._classes()[1]
        if self.backend in ("pycocotools", "hotcoco"):
            evaluator = evaluator_class(self.gt, results, iou_type)
        else:
            evaluator = evaluator_class(self.gt, results, iou_type, print_function=lambda *_: None)
        evaluator.params.maxDets = [1, 10, self.max_dets]
        evaluator.evaluate()
        evaluator.accumulate()
        return evaluator

    def stats(self, evaluator) -> dict[str, float]:
        return dict(zip(stat_names(self.max_dets), coco_stats(evaluator.eval, np.asarray(evaluator.params.iouThrs))))

    def per_category(self, evaluator) -> dict[int, dict[str, Any]]:
        """AP (IoU .50:.95, all areas, max_dets) of each ground-truth category; None where the
        category has no ground truth."""
        precision = evaluator.eval["precision"]  # [IoU thresholds, recall points, categories, areas, caps]
        table = {}
        for k, category_id in enumerate(evaluator.params.catIds):
            p = precision[:, :, k, 0, -1]
            table[int(category_id)] = {"name": self.gt.cats[category_id].get("name", str(category_id)),
                                       "AP": float(p[p > -1].mean()) if (p > -1).any() else None}
        return table

    def score(self, detections: np.ndarray) -> dict[str, Any]:
        return self._scored(self.cocoeval(detections))

    def score_masks(self, results: list[dict[str, Any]]) -> dict[str, Any]:
        return self._scored(self.cocoeval_masks(results))

    def _scored(self, evaluator) -> dict[str, Any]:
        return {"metrics": self.stats(evaluator), "per_category": self.per_category(evaluator)}

    @property
    def unsegmented(self) -> int:
        """Ground-truth objects without a segmentation (mask AP needs none)."""
        return sum("segmentation" not in a for a in self.coco["annotations"])


def coco_stats(evaluation: dict[str, Any], iou_thresholds: np.ndarray) -> list[float]:
    """pycocotools' summarize() for bbox, with the last cap wherever it uses 100: AP, AP50,
    AP75, AP by area, AR at each cap, AR by area. -1 where nothing is defined."""
    precision, recall = evaluation["precision"], evaluation["recall"]  # [T,R,K,A,M], [T,K,A,M]
    t50, t75 = (np.flatnonzero(iou_thresholds == t) for t in (0.5, 0.75))

    def mean(values: np.ndarray) -> float:
        kept = values[values > -1]
        return float(np.mean(kept)) if kept.size else -1.0

    def ap(area: int = 0, t: Any = slice(None)) -> float:
        return mean(precision[t, :, :, area, -1])

    def ar(area: int = 0, cap: int = -1) -> float:
        return mean(recall[:, :, area, cap])

    return [ap(), ap(t=t50), ap(t=t75), ap(1), ap(2), ap(3), ar(cap=0), ar(cap=1), ar(), ar(1), ar(2), ar(3)]


def detections_array(batches: Iterable[pa.RecordBatch | pa.Table], scorer: CocoScorer
                     ) -> tuple[np.ndarray, dict[str, Any]]:
    """[N,7] detections of predictions rows, batch by batch (each image's top max_dets kept as
    it streams past), matched to ground-truth images, and the report of what did not match."""
    counts: Counter = Counter()
    errors: Counter = Counter()
    unknown_paths: list[str] = []
    unknown_categories: set[int] = set()
    kept, matched = [], []
    for batch in batches:
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        image_ids = match_image_ids(table, scorer)
        known = pc.invert(pc.is_null(image_ids))
        counts["rows"] += table.num_rows
        errors.update(error_kinds(table["error"]))
        unknown = table.num_rows - (pc.sum(known).as_py() or 0)
        counts["unknown_rows"] += unknown
        if unknown and len(unknown_paths) < 10:
            unknown_paths += table.filter(pc.invert(known))["path"].to_pylist()[:10 - len(unknown_paths)]
        table = table.append_column("gt_image_id", image_ids).filter(known)
        matched.append(table["gt_image_id"].to_numpy())
        detections, dropped = _row_detections(table, scorer)
        unknown_categories.update(dropped.pop("categories"))
        counts.update(dropped)
        kept.append(detections)
    matched_ids = np.concatenate(matched) if matched else np.zeros(0, np.int64)
    duplicated = len(matched_ids) - len(np.unique(matched_ids))
    if duplicated:
        raise ValueError(f"{duplicated} ground-truth image(s) have more than one prediction row")
    missed = np.setdiff1d(scorer.image_ids, matched_ids)
    detections = np.concatenate(kept) if kept else np.zeros((0, 7))
    report = {"rows": counts["rows"], "error_rows": dict(errors), "unknown_rows": counts["unknown_rows"],
              "unknown_paths": unknown_paths, "missed_images": len(missed), "missed_image_ids": missed[:10].tolist(),
              "invalid_box_detections": counts["invalid_box_detections"],
              "unknown_category_detections": counts["unknown_category_detections"],
              "unknown_category_ids": sorted(unknown_categories)[:20],
              "truncated_detections": counts["truncated_detections"], "detections": len(detections)}
    report["warnings"] = report_warnings(report, scorer.max_dets)
    return detections, report


def _row_detections(table: pa.Table, scorer: CocoScorer) -> tuple[np.ndarray, dict[str, Any]]:
    """The kept [N,7] detections of matched rows, and the counts of those dropped."""
    counts = pc.list_value_length(table["scores"]).fill_null(0).to_numpy(zero_copy_only=False)
    rows = np.repeat(np.arange(table.num_rows), counts)
    boxes = _flat(table["boxes"]).reshape(-1, 4).astype(np.float64)
    scores = _flat(table["scores"]).astype(np.float64)
    labels = _flat(table["labels"]).astype(np.int64)
    ids = table["gt_image_id"].to_numpy()[rows].astype(np.int64)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    detections = np.column_stack([ids, xywh, scores, labels])

    valid = np.isfinite(detections).all(axis=1) & (xywh[:, 2] >= 0) & (xywh[:, 3] >= 0)
    known_category = np.isin(labels, scorer.category_ids)
    dropped = {"invalid_box_detections": int((~valid).sum()),
               "unknown_category_detections": int((valid & ~known_category).sum()),
               "categories": set(labels[valid & ~known_category].tolist())}
    detections, dropped["truncated_detections"] = top_per_image(detections[valid & known_category], scorer.max_dets)
    return detections, dropped


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


def by_image_and_score(detections: np.ndarray) -> np.ndarray:
    """[N,7] detections ordered by image id, then score descending, stably: pycocotools breaks
    score ties by input order, so the order rows arrive in cannot change the stats."""
    return detections[np.lexsort((-detections[:, 5], detections[:, 0]))]


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


def score_predictions(batches: Iterable[pa.RecordBatch | pa.Table], scorer: CocoScorer) -> dict[str, Any]:
    """metrics (the 12 stats), per_category AP, and the matching report, with the backend and
    cap that produced them."""
    detections, report = detections_array(batches, scorer)
    return {**scorer.score(detections), "report": report, "backend": scorer.backend, "max_dets": scorer.max_dets}


def score_files(predictions_uri: str, annotations_uri: str, backend: str = DEFAULT_BACKEND,
                max_dets: int = MAX_DETECTIONS, panoptic_annotations: str | None = None,
                panoptic_folder: str | None = None) -> dict[str, Any]:
    """Score a predictions table (file or folder of part files, local or s3://) against a
    COCO annotation file (and its panoptic segmentations against a COCO panoptic file, when
    given); the result also names its inputs."""
    dataset = load_coco(annotations_uri, ".", check_files=False)  # validates, names a bad record
    run = run_metadata(predictions_uri) or {}
    check_label_names(run, dataset.raw["categories"])
    scorer = CocoScorer(dataset.raw, backend, max_dets)
    result = score_predictions(prediction_batches(predictions_uri, COLUMNS, BATCH_ROWS), scorer)
    segm = score_mask_files(predictions_uri, scorer)
    if segm is not None:
        result["segm"] = segm
    result["report"]["warnings"] += run_warnings(run, result["metrics"])
    if panoptic_annotations:
        result["panoptic"] = score_panoptic_files(predictions_uri, panoptic_annotations, panoptic_folder)
    elif has_values(predictions_uri, "panoptic"):
        result["report"]["warnings"].append("the predictions carry panoptic segmentations: pass "
                                            "--panoptic-annotations (COCO panoptic JSON) to score PQ")
    made_with = {k: run[k] for k in ("model", "score_threshold", "min_size", "max_size") if k in run}
    return {"predictions": predictions_uri, "annotations": annotations_uri, "made_with": made_with, **result}


def run_warnings(run: dict[str, Any], metrics: dict[str, float]) -> list[str]:
    """What the predictions' own metadata (the detection run's parameters) says about their AP."""
    said = []
    threshold = run.get("score_threshold")
    if threshold is not None and threshold > SCORE_THRESHOLD:
        said.append(f"the predictions keep only boxes scoring at least {threshold:g} (detect's --score-threshold, "
                    "in their metadata): COCO AP counts lower-scoring boxes too, so this AP is below the one "
                    f"training's validation reports; detect with the default {SCORE_THRESHOLD:g} to compare")
    own = run.get("checkpoint_contract")
    sizes = (run.get("min_size"), run.get("max_size"))
    if own and sizes != (own["min_size"], own["max_size"]):
        said.append(f"the images were resized to {sizes[0]} / {sizes[1]} (--min-size / --max-size), not the "
                    f"{own['min_size']} / {own['max_size']} the checkpoint was trained and validated with")
    paper = (PAPER_CONTRACT.min_size, PAPER_CONTRACT.max_size)
    if metrics.get("AP", 0) <= 0 and "checkpoint_contract" in run and own is None and sizes == paper:
        said.append(f"the checkpoint records no input contract, so its images were resized to the paper's "
                    f"{paper[0]} / {paper[1]}: a model trained at other sizes detects little at these")
    return said


def write_evaluation(output: str, result: dict[str, Any]) -> list[str]:
    """output/metrics.json (everything) and output/metrics.parquet (one row: inputs, backend and
    cap, the 12 stats as columns (and segm_* for masks, PQ, SQ, RQ and their _th / _st for panoptic),
    per-category AP and the report as JSON text)."""
    text = json.dumps(result, indent=2, sort_keys=True)
    row = {"predictions": [result["predictions"]], "annotations": [result["annotations"]],
           "backend": [result["backend"]], "max_dets": [result["max_dets"]],
           **{name: [value] for name, value in result["metrics"].items()},
           **{f"segm_{name}": [value] for name, value in result.get("segm", {}).get("metrics", {}).items()},
           **{name: [value] for name, value in result.get("panoptic", {}).get("metrics", {}).items()},
           "per_category": [json.dumps(result["per_category"], sort_keys=True)],
           "report": [json.dumps(result["report"], sort_keys=True)]}
    buffer = io.BytesIO()
    pq.write_table(pa.table(row), buffer)
    targets = [uris.join(output, "metrics.json"), uris.join(output, "metrics.parquet")]
    uris.write_bytes(targets[0], text.encode())
    uris.write_bytes(targets[1], buffer.getvalue())
    return targets


def format_tables(result: dict[str, Any]) -> str:
    """The 12 stats and the per-category AP, as a person reads them (boxes, then masks)."""
    lines = []
    for kind, scored in (("boxes", result), ("masks", result.get("segm"))):
        if not scored or "metrics" not in scored:
            continue
        lines.append(f"{kind}:")
        lines += [f"{name:>6} {value:.4f}" for name, value in scored["metrics"].items()]
        lines.append(f"{'id':>6} {'AP':>7}  category")
        for category_id, entry in sorted(scored["per_category"].items()):
            ap = "    n/a" if entry["AP"] is None else f"{entry['AP']:.4f}"
            lines.append(f"{category_id:>6} {ap:>7}  {entry['name']}")
    if "panoptic" in result:
        lines += format_panoptic(result["panoptic"])
    return "\n".join(lines)


def format_panoptic(scored: dict[str, Any]) -> list[str]:
    """panopticapi's table (PQ, SQ, RQ in %, categories counted) and PQ per category."""
    def cell(value: float | None) -> str:
        return "   n/a" if value is None else f"{100 * value:6.1f}"

    lines = ["panoptic:", f"{'':>8} {'PQ':>6} {'SQ':>6} {'RQ':>6} {'N':>4}"]
    lines += [f"{group:>8} {cell(v['pq'])} {cell(v['sq'])} {cell(v['rq'])} {v['n']:>4}"
              for group, v in scored["groups"].items()]
    lines.append(f"{'id':>6} {'PQ':>7}  category")
    lines += [f"{category_id:>6} {cell(entry['pq']):>7}  {entry['name']}"
              for category_id, entry in sorted(scored["per_category"].items())]
    return lines


# ---------------------------------------------------------------- masks (segm)

def score_mask_files(predictions_uri: str, scorer: CocoScorer) -> dict[str, Any] | None:
    """Mask AP (COCO segm: the 12 stats and per-category AP) of a table's masks column when its
    rows carry masks (None otherwise); when a ground-truth object has no segmentation, says so."""
    if not has_values(predictions_uri, "masks"):
        return None
    if scorer.unsegmented:
        return {"skipped": f"{scorer.unsegmented} of {len(scorer.coco['annotations'])} ground-truth objects have "
                           "no segmentation: no mask AP"}
    results: list[dict[str, Any]] = []
    for batch in prediction_batches(predictions_uri, (*COLUMNS, "width", "height", "masks"), BATCH_ROWS):
        results += mask_results(pa.Table.from_batches([batch]), scorer)
    return {**scorer.score_masks(results), "detections": len(results)}


def has_values(predictions_uri: str, column: str) -> bool:
    """Whether any row has a value in `column` (masks, panoptic: a table written before they were
    has no such column)."""
    try:
        return any(batch.column(0).null_count < batch.num_rows
                   for batch in prediction_batches(predictions_uri, (column,), BATCH_ROWS))
    except ValueError:
        return False


def mask_results(table: pa.Table, scorer: CocoScorer) -> list[dict[str, Any]]:
    """COCO results of the rows' masks: matched images, known categories and finite scores, at
    most max_dets per image (the top by score; ties: the row's order), as the boxes are kept."""
    table = table.append_column("gt_image_id", match_image_ids(table, scorer))
    known = set(scorer.category_ids.tolist())
    results = []
    for row in table.filter(pc.invert(pc.is_null(table["gt_image_id"]))).to_pylist():
        if not row["masks"]:
            continue
        kept = [(s, c, m) for s, c, m in zip(row["scores"], row["labels"], row["masks"])
                if c in known and np.isfinite(s)]
        kept = sorted(kept, key=lambda d: -d[0])[:scorer.max_dets]  # stable: ties keep the row's order
        size = [row["height"], row["width"]]
        results += [{"image_id": row["gt_image_id"], "category_id": c, "score": s,
                     "segmentation": {"size": size, "counts": m}} for s, c, m in kept]
    return results
