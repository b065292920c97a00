"""COCO bbox scoring of a predictions table with pycocotools (the reference), via Arrow/NumPy.

Traps handled (see ../shared/reference/coco/README.md): pycocotools breaks score ties
by input order, so detections are ordered by image id, then score descending, stably,
keeping each row's own order (one row = one image, so the order rows arrive in from
part files cannot matter); loadRes([]) fails, so an empty result set is built directly;
detections on unknown images or categories are reported and dropped, never silently
ignored; at most 100 detections per image (the top by score), as COCO's server keeps.
"""
from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .predictions import error_kinds

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
MAX_DETECTIONS = 100


def coco_ground_truth(coco: dict[str, Any]) -> COCO:
    gt = COCO()
    gt.dataset = coco
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def coco_bbox_stats(gt: COCO, detections: np.ndarray) -> dict[str, float]:
    """The 12 standard stats of detections [N,7] = (image_id, x, y, w, h, score, category_id)."""
    return dict(zip(STAT_NAMES, run_cocoeval(gt, detections).stats.tolist()))


def run_cocoeval(gt: COCO, detections: np.ndarray) -> COCOeval:
    """COCOeval (bbox) after evaluate/accumulate/summarize, detections ordered by image id
    then score descending, stably."""
    detections = np.asarray(detections, dtype=np.float64).reshape(-1, 7)
    detections = detections[np.lexsort((-detections[:, 5], detections[:, 0]))]
    with contextlib.redirect_stdout(io.StringIO()):
        if len(detections):
            results = gt.loadRes(detections)
        else:  # loadRes([]) raises; no detections is a valid result (AP 0)
            results = coco_ground_truth({"images": gt.dataset["images"], "categories": gt.dataset["categories"],
                                         "annotations": []})
        evaluator = COCOeval(gt, results, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def per_category_ap(evaluator: COCOeval, gt: COCO) -> dict[int, dict[str, Any]]:
    """AP (IoU .50:.95, all areas, 100 detections) of each ground-truth category; None
    where the category has no ground truth."""
    precision = evaluator.eval["precision"]  # [IoU thresholds, recall points, categories, areas, max dets]
    table = {}
    for k, category_id in enumerate(evaluator.params.catIds):
        p = precision[:, :, k, 0, -1]
        table[int(category_id)] = {"name": gt.cats[category_id].get("name", str(category_id)),
                                   "AP": float(p[p > -1].mean()) if (p > -1).any() else None}
    return table


def detections_array(table: pa.Table, gt: COCO) -> tuple[np.ndarray, dict[str, Any]]:
    """[N,7] detections of a predictions table, matched to ground-truth images, and the report
    of what did not match."""
    image_ids = match_image_ids(table, gt)
    report: dict[str, Any] = {"rows": table.num_rows, "error_rows": error_kinds(table["error"])}
    known = pc.invert(pc.is_null(image_ids))
    report["unknown_rows"] = int(table.num_rows - pc.sum(known).as_py()) if table.num_rows else 0
    report["unknown_paths"] = table.filter(pc.invert(known))["path"].to_pylist()[:10]
    duplicated = len(image_ids.drop_null()) - len(pc.unique(image_ids.drop_null()))
    if duplicated:
        raise ValueError(f"{duplicated} ground-truth image(s) have more than one prediction row")
    scored = set(image_ids.drop_null().to_pylist())
    missed = [i for i in gt.getImgIds() if i not in scored]
    report["missed_images"], report["missed_image_ids"] = len(missed), missed[:10]

    table = table.append_column("gt_image_id", image_ids).filter(known)
    counts = pc.list_value_length(table["scores"]).fill_null(0).to_numpy(zero_copy_only=False)
    rows = np.repeat(np.arange(table.num_rows), counts)
    boxes = _flat(table["boxes"]).reshape(-1, 4).astype(np.float64)
    scores = _flat(table["scores"]).astype(np.float64)
    labels = _flat(table["labels"]).astype(np.int64)
    ids = table["gt_image_id"].to_numpy()[rows].astype(np.int64)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    detections = np.column_stack([ids, xywh, scores, labels])

    known_category = np.isin(labels, gt.getCatIds())
    report["unknown_category_detections"] = int((~known_category).sum())
    report["unknown_category_ids"] = sorted(set(labels[~known_category].tolist()))[:20]
    detections = detections[known_category]
    detections, report["truncated_detections"] = top_per_image(detections, MAX_DETECTIONS)
    report["detections"] = len(detections)
    return detections, report


def top_per_image(detections: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """At most k detections per image, the highest scores (ties: earlier first)."""
    order = np.lexsort((-detections[:, 5], detections[:, 0]))
    ranked = detections[order]
    starts = np.searchsorted(ranked[:, 0], ranked[:, 0], side="left")
    keep = np.arange(len(ranked)) - starts < k
    return ranked[keep], int((~keep).sum())


def match_image_ids(table: pa.Table, gt: COCO) -> pa.ChunkedArray:
    """Each row's ground-truth image id: its image_id when set (null if unknown), else the
    image whose file_name ends its path; null when nothing matches."""
    known_ids = pa.array(sorted(gt.getImgIds()), pa.int64())
    image_id = table["image_id"]
    by_id = pc.if_else(pc.is_in(image_id, value_set=known_ids), image_id, pa.scalar(None, pa.int64()))
    unset = pc.is_null(image_id)
    if not table.num_rows or not pc.any(unset).as_py():
        return by_id
    names = {img["file_name"]: img["id"] for img in gt.dataset["images"]}
    by_name = [_match_name(path, names) if need else None
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


def evaluate_predictions(table: pa.Table, gt: COCO) -> dict[str, Any]:
    """metrics (the 12 stats), per_category AP, and the matching report."""
    detections, report = detections_array(table, gt)
    evaluator = run_cocoeval(gt, detections)
    return {
        "metrics": dict(zip(STAT_NAMES, evaluator.stats.tolist())),
        "per_category": per_category_ap(evaluator, gt),
        "report": report,
    }


def evaluate_files(predictions_uri: str, annotations_uri: str) -> dict[str, Any]:
    """Score a predictions table (file or folder of part files, local or s3://) against a
    COCO annotation file; the result also names its inputs."""
    from .coco import load_coco
    from .predictions import read_predictions

    dataset = load_coco(annotations_uri, ".", check_files=False)  # validates, names a bad record
    result = evaluate_predictions(read_predictions(predictions_uri), coco_ground_truth(dataset.raw))
    return {"predictions": predictions_uri, "annotations": annotations_uri, **result}


def write_evaluation(output: str, result: dict[str, Any]) -> list[str]:
    """output/metrics.json (everything) and output/metrics.parquet (one row: inputs, the
    12 stats as columns, per-category AP and the report as JSON text)."""
    import json

    import pyarrow.parquet as pq

    from model import uri as uris

    text = json.dumps(result, indent=2, sort_keys=True)
    row = {"predictions": [result["predictions"]], "annotations": [result["annotations"]],
           **{name: [result["metrics"][name]] for name in STAT_NAMES},
           "per_category": [json.dumps(result["per_category"], sort_keys=True)],
           "report": [json.dumps(result["report"], sort_keys=True)]}
    buffer = io.BytesIO()
    pq.write_table(pa.table(row), buffer)
    targets = [uris.join(output, "metrics.json"), uris.join(output, "metrics.parquet")]
    uris.write_bytes(targets[0], text.encode())
    uris.write_bytes(targets[1], buffer.getvalue())
    return targets


def format_tables(result: dict[str, Any]) -> str:
    """The 12 stats and the per-category AP, as a person reads them."""
    lines = [f"{name:>6} {result['metrics'][name]:.4f}" for name in STAT_NAMES]
    lines.append(f"{'id':>6} {'AP':>7}  category")
    for category_id, entry in sorted(result["per_category"].items()):
        ap = "    n/a" if entry["AP"] is None else f"{entry['AP']:.4f}"
        lines.append(f"{category_id:>6} {ap:>7}  {entry['name']}")
    return "\n".join(lines)
