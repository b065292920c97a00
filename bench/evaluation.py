"""Scoring at scale: hotcoco and faster-coco-eval against pycocotools, and the evaluation job's memory.

Builds a ground truth of N images (5 boxes each; some crowd regions, some images empty) and
predictions of 100 detections per image, written as Parquet part files, then measures in one
run:
- the scorer alone (index the ground truth, then evaluate + accumulate + the 12 stats) with
  each backend on the same detection array: fast backend / pycocotools (goal <= 0.2);
- the same for masks (segm): each ground-truth object an octagon polygon inside its box, each
  detection its box's mask as RLE, at most --mask-per-image per image;
- the whole job (`jobs/evaluate.py`, a fresh process: imports, reading Parquet, conversion,
  scoring, output) with each backend: time ratio (goal <= 0.35) and peak memory;
- the job's peak memory at 10x the predictions (1,000 detections per image of the same
  images; the cap keeps 100 of them as the rows stream past): 10x / 1x (goal <= 2).

    python -m bench.evaluation [--images 5000] [--per-image 100] [--mask-per-image 100] [--scale 10]
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from bench.process import run_measured
from pipeline.evaluation.rows import detections_array
from pipeline.evaluation.scoring import BACKENDS, DEFAULT_BACKEND, CocoScorer, by_image_and_score
from pipeline.predictions import detections_table


def build(images: int, per_image: int, seed: int = 0, crowd_share: float = 0.05, empty_share: float = 0.05):
    """(ground truth as a COCO dict, predictions table): 10 categories, 5 boxes per non-empty
    image of which about crowd_share are crowd regions, detections scattered around them."""
    rng = np.random.default_rng(seed)
    categories = [{"id": c, "name": str(c)} for c in range(1, 11)]
    gt_images, annotations, rows = [], [], []
    for i in range(1, images + 1):
        gt_images.append({"id": i, "file_name": f"{i}.jpg", "width": 640, "height": 480})
        xy = rng.uniform(0, 400, (5, 2))
        wh = rng.uniform(10, 200, (5, 2))
        if rng.uniform() >= empty_share:
            for k in range(5):
                annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(rng.integers(1, 11)),
                                    "bbox": [*xy[k], *wh[k]], "area": float(wh[k].prod()),
                                    "iscrowd": int(rng.uniform() < crowd_share)})
        corner = xy[rng.integers(0, 5, per_image)] + rng.normal(0, 5, (per_image, 2))
        boxes = np.column_stack([corner, corner + rng.uniform(10, 200, (per_image, 2))])
        rows.append({"boxes": boxes.astype(np.float32), "scores": rng.uniform(0, 1, per_image).astype(np.float32),
                     "labels": rng.integers(1, 11, per_image).astype(np.int32)})
    gt = {"images": gt_images, "annotations": annotations, "categories": categories}
    table = detections_table([f"/x/{i}.jpg" for i in range(1, images + 1)], list(range(1, images + 1)),
                             [640] * images, [480] * images, rows, [None] * images, "bench")
    return gt, table


def with_masks(gt: dict, detections: np.ndarray, per_image: int) -> tuple[dict, list[dict]]:
    """The ground truth with an octagon polygon inside each box, and mask results: each
    detection's box as RLE, the top per_image of each image (detections: by image, best first)."""
    import pycocotools.mask as mask_utils

    size = {i["id"]: (i["height"], i["width"]) for i in gt["images"]}
    annotations = []
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        xs = [x + w * u for u in (0.3, 0.7, 1, 1, 0.7, 0.3, 0, 0)]
        ys = [y + h * v for v in (0, 0, 0.3, 0.7, 1, 1, 0.7, 0.3)]
        annotations.append({**a, "segmentation": [[c for xy in zip(xs, ys) for c in xy]]})
    image_ids = detections[:, 0].astype(np.int64)
    first = np.flatnonzero(np.r_[True, image_ids[1:] != image_ids[:-1]])
    rank = np.arange(len(detections)) - np.repeat(first, np.diff(np.r_[first, len(detections)]))
    kept = detections[rank < per_image]
    results = []
    for image_id in np.unique(kept[:, 0]).astype(np.int64).tolist():
        rows = kept[kept[:, 0] == image_id]
        height, width = size[image_id]
        rles = mask_utils.frPyObjects(np.ascontiguousarray(rows[:, 1:5]), height, width)
        results += [{"image_id": image_id, "category_id": int(c), "score": float(s),
                     "segmentation": {"size": r["size"], "counts": r["counts"].decode()}}
                    for c, s, r in zip(rows[:, 6], rows[:, 5], rles)]
    return {**gt, "annotations": annotations}, results


def mask_scorer_seconds(gt: dict, results: list[dict], backend: str) -> tuple[float, dict]:
    results = copy.deepcopy(results)  # loadRes adds fields to the dicts it is given
    started = time.perf_counter()
    scorer = CocoScorer(gt, backend)
    metrics = scorer.stats(scorer.cocoeval_masks(results))
    return time.perf_counter() - started, metrics


def write_parts(table, folder: Path, rows_per_part: int = 500) -> None:
    folder.mkdir(parents=True)
    for k, start in enumerate(range(0, table.num_rows, rows_per_part)):
        pq.write_table(table.slice(start, rows_per_part), folder / f"part-{k:06d}.parquet")


def scorer_seconds(gt: dict, detections: np.ndarray, backend: str) -> tuple[float, dict]:
    started = time.perf_counter()
    scorer = CocoScorer(gt, backend)
    metrics = scorer.stats(scorer.cocoeval(detections))
    return time.perf_counter() - started, metrics


def run_job(predictions: Path, annotations: Path, backend: str) -> dict:
    """Wall seconds, peak resident memory (MiB) and the summary of one evaluation job."""
    command = [sys.executable, "jobs/evaluate.py", "--predictions", str(predictions), "--annotations",
               str(annotations), "--backend", backend]
    run = run_measured(command)
    if run["exit_code"] != 0:
        raise RuntimeError(f"{' '.join(command)} failed")
    return run


def max_difference(metrics: dict, reference: dict) -> float:
    return max(abs(metrics[n] - v) for n, v in reference.items())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--per-image", type=int, default=100)
    parser.add_argument("--mask-per-image", type=int, default=100, help="mask detections scored per image")
    parser.add_argument("--scale", type=int, default=10, help="times the detections per image for the memory run")
    args = parser.parse_args(argv)
    gt, table = build(args.images, args.per_image)
    detections, _ = detections_array([table], CocoScorer(gt, "pycocotools"))
    scorer = {backend: scorer_seconds(gt, detections, backend) for backend in BACKENDS}
    segm_gt, mask_results = with_masks(gt, by_image_and_score(detections), args.mask_per_image)
    masks = {backend: mask_scorer_seconds(segm_gt, mask_results, backend) for backend in BACKENDS}
    del segm_gt, mask_results

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "gt.json").write_text(json.dumps(gt))
        write_parts(table, root / "1x")
        del table
        write_parts(build(args.images, args.per_image * args.scale)[1], root / f"{args.scale}x")
        jobs = {backend: run_job(root / "1x", root / "gt.json", backend) for backend in BACKENDS}
        scaled = run_job(root / f"{args.scale}x", root / "gt.json", DEFAULT_BACKEND)

    fast, reference = jobs[DEFAULT_BACKEND], jobs["pycocotools"]
    print(json.dumps({
        "images": args.images, "detections": len(detections), "mask_detections": args.mask_per_image * args.images,
        "default_backend": DEFAULT_BACKEND,
        "scorer_seconds": {b: round(s, 2) for b, (s, _) in scorer.items()},
        "scorer_ratio": {b: round(s / scorer["pycocotools"][0], 3) for b, (s, _) in scorer.items()},
        "stats_max_abs_difference": {b: max_difference(m, scorer["pycocotools"][1]) for b, (_, m) in scorer.items()},
        "segm_scorer_seconds": {b: round(s, 2) for b, (s, _) in masks.items()},
        "segm_scorer_ratio": {b: round(s / masks["pycocotools"][0], 3) for b, (s, _) in masks.items()},
        "segm_stats_max_abs_difference": {b: max_difference(m, masks["pycocotools"][1]) for b, (_, m) in masks.items()},
        "segm_AP": round(masks["pycocotools"][1]["AP"], 4),
        "job_seconds": {b: round(j["seconds"], 2) for b, j in jobs.items()},
        "job_ratio": {b: round(j["seconds"] / reference["seconds"], 3) for b, j in jobs.items()},
        "job_peak_mib": {b: round(j["peak_mib"]) for b, j in jobs.items()},
        f"job_peak_mib_{args.scale}x": round(scaled["peak_mib"]),
        f"memory_ratio_{args.scale}x": round(scaled["peak_mib"] / fast["peak_mib"], 3),
        f"truncated_detections_{args.scale}x": scaled["summary"]["report"]["truncated_detections"],
        "AP": round(fast["summary"]["metrics"]["AP"], 4),
    }))


if __name__ == "__main__":
    main()
