"""Scheduled re-evaluation: detect + score every new checkpoint on a fixed evaluation set.

    python jobs/reevaluate.py --checkpoints URI --images ROOT --annotations ANN --history URI \
        [--fail-on-regression PCT] [--every 6h]

Checkpoints already in the history for this evaluation set (same weights, annotation file
and parameters) are skipped, so a run with nothing new does no detection. Each run ends
with one JSON line; with --fail-on-regression the exit code is 3 when a new checkpoint's
AP is more than PCT % below the previous or the best earlier one.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout or a working dir

from pipeline.cluster.token import use_token  # noqa: E402

use_token()  # the token of the user's clusters, before Ray is imported: Ray reads its mode once, at import

import ray  # noqa: E402

from pipeline.cluster.connect import RAY_HELP, use_ray  # noqa: E402
from pipeline.detection import actors_arg  # noqa: E402
from pipeline.evaluation import BACKENDS, ReevaluateConfig, max_dets_arg, reevaluate  # noqa: E402
from pipeline.progress import reevaluation_headline  # noqa: E402

REGRESSION_EXIT = 3


def duration_seconds(text: str) -> float:
    """'90s', '30m', '6h', '1d' -> seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"expected a duration like 30m, 6h or 1d, got {text!r}")
    return float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def main(argv: list[str] | None = None) -> int:
    d = ReevaluateConfig("", "", "", "")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoints", required=True, help="folder / s3:// prefix searched recursively, or one file")
    p.add_argument("--images", required=True, help="folder of the evaluation images (the file_names' root)")
    p.add_argument("--annotations", required=True, help="COCO annotation JSON of the evaluation set")
    p.add_argument("--history", required=True, help="folder (path or s3://) of the history, plot and report")
    p.add_argument("--fail-on-regression", type=float, metavar="PCT",
                   help=f"exit {REGRESSION_EXIT} when AP drops more than PCT %% (relative)")
    p.add_argument("--regression-pct", type=float, default=d.regression_pct,
                   help="drop reported as a regression without failing (default 1.0 %%)")
    p.add_argument("--score-threshold", type=float, default=d.score_threshold)
    p.add_argument("--min-size", type=int, help="shorter side after resizing (default: each checkpoint's own "
                   "input contract)")
    p.add_argument("--max-size", type=int, help="longer side cap (default: each checkpoint's own)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--actors", type=actors_arg, help="MIN,MAX model actors")
    p.add_argument("--backend", choices=BACKENDS, default=d.backend,
                   help=f"COCO scorer (default {d.backend}; pycocotools is the reference, same numbers)")
    p.add_argument("--max-dets", type=max_dets_arg, default=d.max_dets,
                   help=f"detections scored per image (default {d.max_dets}); rows of another cap are a "
                        "separate series, never compared")
    p.add_argument("--panoptic-annotations", help="COCO panoptic JSON: PQ / SQ / RQ of checkpoints with stuff "
                   "classes, kept in the history")
    p.add_argument("--panoptic-folder", help="its PNGs (default: the JSON's path without .json)")
    p.add_argument("--every", type=duration_seconds, help="keep running, once per DURATION (30m, 6h, 1d)")
    p.add_argument("--ray", metavar="local|head|HOST:PORT", help=RAY_HELP)
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error(f"--batch-size must be at least 1, not {args.batch_size}")
    use_ray(args.ray)
    config = ReevaluateConfig(
        checkpoints=args.checkpoints, images=args.images, annotations=args.annotations, history=args.history,
        score_threshold=args.score_threshold, min_size=args.min_size, max_size=args.max_size,
        batch_size=args.batch_size, actors=args.actors,
        backend=args.backend, max_dets=args.max_dets, panoptic_annotations=args.panoptic_annotations,
        panoptic_folder=args.panoptic_folder,
        regression_pct=args.fail_on_regression if args.fail_on_regression is not None else args.regression_pct,
    )
    while True:
        started = time.time()
        try:
            summary = reevaluate(config)
        except (ValueError, OSError) as e:  # bad input, or images mostly unreadable: one line, no history row
            ray.shutdown()
            sys.exit(f"reevaluate: {e}")
        if args.every is None and ray.is_initialized():
            ray.shutdown()  # before the JSON line: Ray's own log lines must not follow it
        print(reevaluation_headline(summary))
        print(json.dumps(summary), flush=True)
        failed = args.fail_on_regression is not None and summary["regressions"]
        if args.every is None:
            return REGRESSION_EXIT if failed else 0
        time.sleep(max(0.0, args.every - (time.time() - started)))


if __name__ == "__main__":
    sys.exit(main())
