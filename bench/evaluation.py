"""Scoring speed at scale: converting a predictions table (Arrow/NumPy) vs pycocotools itself.

Builds a ground truth of N images and a predictions table of 100 detections per image,
then times (1) our conversion of the table into pycocotools' detection array and (2) the
COCOeval run (loadRes + evaluate + accumulate), in one process. The ratio says how much
the conversion adds on top of the reference scorer.

    python -m bench.evaluation [--images 5000]
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from pipeline.evaluation import coco_ground_truth, detections_array, run_cocoeval
from pipeline.predictions import detections_table


def build(images: int, per_image: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    categories = [{"id": c, "name": str(c)} for c in range(1, 11)]
    gt_images, annotations, rows = [], [], []
    for i in range(1, images + 1):
        gt_images.append({"id": i, "file_name": f"{i}.jpg", "width": 640, "height": 480})
        xy = rng.uniform(0, 400, (5, 2))
        wh = rng.uniform(10, 200, (5, 2))
        for k in range(5):
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(rng.integers(1, 11)),
                                "bbox": [*xy[k], *wh[k]], "area": float(wh[k].prod()), "iscrowd": 0})
        corner = xy[rng.integers(0, 5, per_image)] + rng.normal(0, 5, (per_image, 2))
        boxes = np.column_stack([corner, corner + rng.uniform(10, 200, (per_image, 2))])
        rows.append({"boxes": boxes.astype(np.float32), "scores": rng.uniform(0, 1, per_image).astype(np.float32),
                     "labels": rng.integers(1, 11, per_image).astype(np.int32)})
    gt = coco_ground_truth({"images": gt_images, "annotations": annotations, "categories": categories})
    table = detections_table([f"/x/{i}.jpg" for i in range(1, images + 1)], list(range(1, images + 1)),
                             [640] * images, [480] * images, rows, [None] * images, "bench")
    return gt, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--per-image", type=int, default=100)
    args = parser.parse_args()
    gt, table = build(args.images, args.per_image)
    started = time.perf_counter()
    detections, _ = detections_array(table, gt)
    convert = time.perf_counter() - started
    started = time.perf_counter()
    stats = run_cocoeval(gt, detections).stats
    score = time.perf_counter() - started
    print(json.dumps({"images": args.images, "detections": len(detections), "convert_seconds": round(convert, 3),
                      "cocoeval_seconds": round(score, 2), "convert_share": round(convert / (convert + score), 4),
                      "AP": round(float(stats[0]), 4)}))


if __name__ == "__main__":
    main()
