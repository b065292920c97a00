"""`jobs/train.py --dry-run` on an annotation file the size of COCO train2017.

Writes a COCO file of 118,287 images and 860,001 boxes (80 categories; each box with a
24-value polygon, near COCO's average, so that the JSON is of a realistic size), then runs
the dry run on it in a fresh process (the image files are absent, so the sample check
reports them missing, as it should) and reports wall time and peak memory. Goals: <= 120 s,
<= 4 GB.

    python -m bench.dry_run [--images 118287] [--boxes 860001]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.process import run_measured


def write_annotations(path: Path, images: int, boxes: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    owner = np.sort(rng.integers(1, images + 1, boxes))
    xy = rng.uniform(0, 500, (boxes, 2)).round(2)
    wh = rng.uniform(1, 140, (boxes, 2)).round(2)
    polygon = rng.uniform(0, 640, (boxes, 24)).round(2)
    category = rng.integers(1, 81, boxes)
    with open(path, "w") as f:
        f.write('{"info": {}, "licenses": [], "categories": ')
        json.dump([{"id": c, "name": f"class{c}", "supercategory": "x"} for c in range(1, 81)], f)
        f.write(', "images": ')
        json.dump([{"id": i, "file_name": f"{i:012d}.jpg", "width": 640, "height": 480} for i in range(1, images + 1)], f)
        f.write(', "annotations": [')
        for k in range(boxes):
            f.write(("," if k else "") + json.dumps({
                "id": k + 1, "image_id": int(owner[k]), "category_id": int(category[k]), "iscrowd": 0,
                "bbox": [*xy[k].tolist(), *wh[k].tolist()], "area": float(wh[k].prod()),
                "segmentation": [polygon[k].tolist()]}))
        f.write("]}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=118_287)
    parser.add_argument("--boxes", type=int, default=860_001)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        annotations = Path(folder) / "instances_train.json"
        write_annotations(annotations, args.images, args.boxes)
        command = [sys.executable, "jobs/train.py", "--annotations", str(annotations), "--images",
                   str(Path(folder) / "train2017"), "--storage", str(Path(folder) / "runs"), "--name", "r50",
                   "--preset", "detr-r50", "--from-scratch", "--workers", "32", "--gpu", "--dry-run"]
        run = run_measured(command)  # exit code 1: the image files are absent, as it should say
        summary = run["summary"]
        print(json.dumps({"images": summary["train"]["images"], "boxes": summary["train"]["boxes"],
                          "json_mb": round(annotations.stat().st_size / 1e6), "seconds": round(run["seconds"], 1),
                          "peak_mib": round(run["peak_mib"]), "problems": summary["train"]["problems"]}))


if __name__ == "__main__":
    main()
