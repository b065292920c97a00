"""Scoring at scale: faster-coco-eval against pycocotools, and the evaluation job's memory.

Builds a ground truth of N images (5 boxes each; some crowd regions, some images empty) and
predictions of 100 detections per image, written as Parquet part files, then measures in one
run:
- the scorer alone (index the ground truth, then evaluate + accumulate + the 12 stats) with
  each backend on the same detection array: faster-coco-eval / pycocotools (goal <= 0.2);
- the whole job (`jobs/evaluate.py`, a fresh process: imports, reading Parquet, conversion,
  scoring, output) with each backend: time ratio (goal <= 0.35) and peak memory;
- the job's peak memory at 10x the predictions (1,000 detections per image of the same
  images; the cap keeps 100 of them as the rows stream past): 10x / 1x (goal <= 2).

    python -m bench.evaluation [--images 5000] [--per-image 100] [--scale 10]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from bench.process import run_measured
from pipeline.evaluation import CocoScorer, detections_array
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--per-image", type=int, default=100)
    parser.add_argument("--scale", type=int, default=10, help="times the detections per image for the memory run")
    args = parser.parse_args()
    gt, table = build(args.images, args.per_image)
    detections, _ = detections_array([table], CocoScorer(gt, "pycocotools"))
    scorer = {backend: scorer_seconds(gt, detections, backend) for backend in ("pycocotools", "faster-coco-eval")}
    differences = [abs(scorer["faster-coco-eval"][1][n] - v) for n, v in scorer["pycocotools"][1].items()]

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "gt.json").write_text(json.dumps(gt))
        write_parts(table, root / "1x")
        del table
        write_parts(build(args.images, args.per_image * args.scale)[1], root / f"{args.scale}x")
        jobs = {backend: run_job(root / "1x", root / "gt.json", backend) for backend in ("pycocotools", "faster-coco-eval")}
        scaled = run_job(root / f"{args.scale}x", root / "gt.json", "faster-coco-eval")

    fast, reference = jobs["faster-coco-eval"], jobs["pycocotools"]
    print(json.dumps({
        "images": args.images, "detections": len(detections),
        "scorer_seconds": {b: round(s, 2) for b, (s, _) in scorer.items()},
        "scorer_ratio": round(scorer["faster-coco-eval"][0] / scorer["pycocotools"][0], 3),
        "stats_max_abs_difference": max(differences),
        "job_seconds": {b: round(j["seconds"], 2) for b, j in jobs.items()},
        "job_ratio": round(fast["seconds"] / reference["seconds"], 3),
        "job_peak_mib": {b: round(j["peak_mib"]) for b, j in jobs.items()},
        f"job_peak_mib_{args.scale}x": round(scaled["peak_mib"]),
        f"memory_ratio_{args.scale}x": round(scaled["peak_mib"] / fast["peak_mib"], 3),
        f"truncated_detections_{args.scale}x": scaled["summary"]["report"]["truncated_detections"],
        "AP": round(fast["summary"]["metrics"]["AP"], 4),
    }))


if __name__ == "__main__":
    main()
