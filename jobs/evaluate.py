"""COCO bbox metrics of a predictions table; ends with one JSON summary line.

    python jobs/evaluate.py --predictions URI --annotations URI [--output URI]
        [--backend hotcoco|faster-coco-eval|pycocotools] [--max-dets 100]
        [--panoptic-annotations URI [--panoptic-folder URI]]

Prints the 12 standard stats and a per-category AP table; with --output writes
metrics.json and metrics.parquet there. The last line's `metrics` object holds the 12
stats (AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR<max-dets>, ARs, ARm, ARl), `backend` and
`max_dets` say what produced them, and `report` counts what did not match (missed images,
rows of unknown images, unknown categories, invalid boxes, error rows). What was dropped is
also said on stderr, one line each. Predictions or annotations that cannot be read end with
one `evaluate: ...` line and exit code 1.

Predictions with masks are also scored as masks (segm: the same 12 stats); with
--panoptic-annotations (a COCO panoptic JSON; its PNGs in --panoptic-folder, default the JSON's
path without .json), the panoptic segmentations get PQ, SQ and RQ (All, Things, Stuff).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout or a working dir

from pipeline.evaluation import (  # noqa: E402
    BACKENDS,
    DEFAULT_BACKEND,
    MAX_DETECTIONS,
    format_tables,
    max_dets_arg,
    score_files,
    write_evaluation,
)
from pipeline.paths import absolute  # noqa: E402
from pipeline.progress import evaluation_headline  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--predictions", required=True, help="a Parquet file or folder of part files (path or s3://)")
    p.add_argument("--annotations", required=True, help="COCO annotation JSON (path or s3://)")
    p.add_argument("--output", help="folder (path or s3://) for metrics.json and metrics.parquet")
    p.add_argument("--backend", choices=BACKENDS, default=DEFAULT_BACKEND,
                   help=f"COCO scorer (default {DEFAULT_BACKEND}; pycocotools is the reference, same numbers)")
    p.add_argument("--max-dets", type=max_dets_arg, default=MAX_DETECTIONS,
                   help=f"detections scored per image, the top by score (default {MAX_DETECTIONS}, COCO's rule)")
    p.add_argument("--panoptic-annotations", help="COCO panoptic JSON (path or s3://): scores PQ / SQ / RQ")
    p.add_argument("--panoptic-folder", help="its PNGs (default: the JSON's path without .json)")
    args = p.parse_args(argv)
    try:
        predictions, annotations, output, panoptic, panoptic_folder = (
            absolute(getattr(args, name.replace("-", "_")), f"--{name}")
            for name in ("predictions", "annotations", "output", "panoptic-annotations", "panoptic-folder"))
        result = score_files(predictions, annotations, args.backend, args.max_dets, panoptic, panoptic_folder)
    except (ValueError, FileNotFoundError, OSError) as e:  # CocoFormatError is a ValueError
        sys.exit(f"evaluate: {e}")
    print(format_tables(result))
    for warning in result["report"]["warnings"]:
        print(f"evaluate: warning: {warning}", file=sys.stderr)
    if output:
        result["written"] = write_evaluation(output, result)
    print(evaluation_headline(result))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
