"""COCO bbox and segm scoring of detections, through pycocotools (the reference), hotcoco (the
default: Rust, the same numbers) or faster-coco-eval (C++).

Traps handled (measured on the COCO oracle the tests use): pycocotools breaks score ties
by input order, so detections are ordered by image id, then score descending, stably,
keeping each row's own order (one row = one image, so the order rows arrive in from
part files cannot matter); loadRes([]) fails, so an empty result set is built directly.
The 12 stats are computed from the evaluator's precision / recall arrays with max_dets as
the last cap, by the rule of pycocotools' summarize() (which fixes that cap at 100). What is
kept of a predictions table's rows, and counted when left out: rows.py.
"""
from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
import pyarrow as pa

BACKENDS = ("hotcoco", "faster-coco-eval", "pycocotools")
# hotcoco (Rust) and faster-coco-eval (C++) are proven equal to pycocotools on boxes and masks
# (tests/pipeline/evaluation/test_scoring.py, test_masks.py); hotcoco is the faster (bench/evaluation.py)
DEFAULT_BACKEND = "hotcoco"


MAX_DETECTIONS = 100  # COCO's rule


def stat_names(max_dets: int = MAX_DETECTIONS) -> tuple[str, ...]:
    """The 12 stats; the third AR is at the detection cap (AR100 under COCO's rule)."""
    return ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", f"AR{max_dets}", "ARs", "ARm", "ARl")


STAT_NAMES = stat_names()


def max_dets_problem(max_dets: int) -> str | None:
    """What is wrong with a detection cap: it must be above 10 (COCO's caps are 1, 10 and it)."""
    return None if max_dets > 10 else f"must be above 10 (COCO also scores the top 1 and 10 of each image), not {max_dets}"


class CocoScorer:
    """A ground truth indexed by one backend, scoring detections [N,7] = (image_id, x, y, w, h,
    score, category_id) with at most max_dets per image."""

    def __init__(self, coco: dict[str, Any], backend: str = DEFAULT_BACKEND, max_dets: int = MAX_DETECTIONS):
        if backend not in BACKENDS:
            raise ValueError(f"unknown scoring backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if max_dets_problem(max_dets):
            raise ValueError(f"max_dets {max_dets_problem(max_dets)}")
        self.backend, self.max_dets, self.coco = backend, max_dets, coco
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



def by_image_and_score(detections: np.ndarray) -> np.ndarray:
    """[N,7] detections ordered by image id, then score descending, stably: pycocotools breaks
    score ties by input order, so the order rows arrive in cannot change the stats."""
    return detections[np.lexsort((-detections[:, 5], detections[:, 0]))]
