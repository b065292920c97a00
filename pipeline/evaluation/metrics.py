"""Evaluation, once for every job: every metric a predictions table's outputs allow, from one
pass over its rows (rows.py says what is kept and counted): COCO box AP; mask AP where the rows
carry masks; PQ / SQ / RQ where they carry panoptic segmentations and COCO panoptic annotations
are given. jobs/evaluate.py (score_files), the re-evaluation and training's validation all score
through `evaluate`, and report.flat_metrics is the one row of numbers each of them records."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pyarrow as pa

from ..coco import load_coco
from ..predictions import prediction_batches, run_metadata
from .labels import check_label_names
from .panoptic_quality import PanopticScorer, png_root
from .report import run_warnings
from .rows import Rows
from .scoring import DEFAULT_BACKEND, MAX_DETECTIONS, CocoScorer

BATCH_ROWS = 256  # rows (images) read at a time: memory is one batch plus what is kept
COLUMNS = ("path", "image_id", "boxes", "scores", "labels", "error")
OUTPUT_COLUMNS = ("width", "height", "masks", "panoptic")  # where the model has them


def evaluate(batches: Iterable[pa.RecordBatch | pa.Table], scorer: CocoScorer,
             panoptic: PanopticScorer | None = None) -> dict[str, Any]:
    """metrics (the 12 stats), per_category AP and the report of the boxes, with the backend and
    cap; `segm` (the same for the masks) where the rows carry masks; `panoptic` where they carry
    panoptic segmentations and a panoptic ground truth is given."""
    rows = Rows(scorer)
    for batch in batches:
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        rows.add(table)
        if panoptic is not None and "panoptic" in table.column_names:
            panoptic.add(table)
    detections, report = rows.boxes()
    result = {**scorer.score(detections), "report": report, "backend": scorer.backend, "max_dets": scorer.max_dets}
    if rows.with_masks:
        result["segm"] = score_masks(rows, scorer)
    if rows.with_panoptic and panoptic is not None:
        result["panoptic"] = panoptic.result()
    elif rows.with_panoptic:
        report["warnings"].append("the predictions carry panoptic segmentations: pass --panoptic-annotations "
                                  "(COCO panoptic JSON) to score PQ")
    elif panoptic is not None:
        report["warnings"].append("panoptic annotations were given, but the predictions carry no panoptic "
                                  "segmentations (a model without stuff classes): no PQ")
    return result


def score_masks(rows: Rows, scorer: CocoScorer) -> dict[str, Any]:
    """Mask AP (COCO segm: the 12 stats and per-category AP) of the kept detections' masks; when a
    ground-truth object has no segmentation, says so instead."""
    if scorer.unsegmented:
        return {"skipped": f"{scorer.unsegmented} of {len(scorer.coco['annotations'])} ground-truth objects have "
                           "no segmentation: no mask AP"}
    return {**scorer.score_masks(rows.masks), "detections": len(rows.masks)}


def evaluate_table(predictions_uri: str, scorer: CocoScorer, panoptic_annotations: str | None = None,
                   panoptic_folder: str | None = None) -> dict[str, Any]:
    """`evaluate` of a predictions table (a file or folder of part files, local or s3://), read once."""
    panoptic = (PanopticScorer(panoptic_annotations, panoptic_folder, png_root(predictions_uri))
                if panoptic_annotations else None)
    return evaluate(prediction_batches(predictions_uri, COLUMNS, BATCH_ROWS, optional=OUTPUT_COLUMNS), scorer,
                    panoptic)


def score_files(predictions_uri: str, annotations_uri: str, backend: str = DEFAULT_BACKEND,
                max_dets: int = MAX_DETECTIONS, panoptic_annotations: str | None = None,
                panoptic_folder: str | None = None) -> dict[str, Any]:
    """jobs/evaluate.py: a predictions table against a COCO annotation file (and its panoptic
    segmentations against a COCO panoptic file, when given), with what the table's own metadata
    says about the numbers; the result also names its inputs."""
    dataset = load_coco(annotations_uri, ".", check_files=False)  # validates, names a bad record
    run = run_metadata(predictions_uri) or {}
    check_label_names(run, dataset.raw["categories"])
    result = evaluate_table(predictions_uri, CocoScorer(dataset.raw, backend, max_dets), panoptic_annotations,
                            panoptic_folder)
    result["report"]["warnings"] += run_warnings(run, result["metrics"])
    made_with = {k: run[k] for k in ("model", "score_threshold", "min_size", "max_size") if k in run}
    return {"predictions": predictions_uri, "annotations": annotations_uri, "made_with": made_with, **result}
