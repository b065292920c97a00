"""Bulk detection to Parquet with Ray Data; ends with one JSON summary line.

    python jobs/detect.py --images URI --output URI --checkpoint PATH_OR_URI [...]
    python jobs/submit.py -- python jobs/detect.py ...   (to a Ray head: docs/cluster.md)

--images is a folder or s3:// prefix (searched recursively for image files), a COCO
annotation .json (its images, with their ids), or a manifest (.txt of URIs, or .parquet /
a folder of .parquet with a `path` column; an S3 Inventory in Parquet works once its
`bucket` and `key` are joined into `path`). Every input becomes one row. Re-running the
same command over the same --output skips the shards already done. Every option can also come
from a YAML file (--config; --print-config writes one); OUTPUT/_config.yaml keeps the last run's.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout or a working dir

from pipeline.cluster.token import use_token  # noqa: E402

use_token()  # the token of the user's clusters, before Ray is imported: Ray reads its mode once, at import

import ray  # noqa: E402

from pipeline import options  # noqa: E402
from pipeline.cluster.connect import RAY_HELP, use_ray  # noqa: E402
from pipeline.detection.config import DetectConfig  # noqa: E402
from pipeline.detection.run import run_detection  # noqa: E402
from pipeline.options import absolute  # noqa: E402
from pipeline.progress import detection_headline  # noqa: E402


def parse_args(argv: list[str] | None = None) -> tuple[DetectConfig, argparse.Namespace]:
    """DetectConfig's options (pipeline/detection/config.py), and the job's own flags."""
    p = options.parser(DetectConfig, __doc__)
    p.add_argument("--render", nargs=2, metavar=("K", "DIR"), help="also draw K images with their boxes into DIR")
    p.add_argument("--ray", metavar="local|head|HOST:PORT", help=RAY_HELP)
    return options.parse(p, DetectConfig, argv)


def main(argv: list[str] | None = None) -> None:
    config, args = parse_args(argv)
    use_ray(args.ray)
    try:
        summary = run_detection(config)
    except (ValueError, RuntimeError, OSError, ImportError) as e:  # bad input, a cluster too small, no onnxruntime
        sys.exit(f"detect: {e}")
    finally:
        ray.shutdown()
    if args.render:
        from pipeline.detection.render import class_names, render_predictions  # torchvision's drawing: only here

        summary["rendered"] = render_predictions(summary["output"], int(args.render[0]),
                                                 absolute(args.render[1], "--render"),
                                                 names=class_names(summary["output"], config.images))
    print(detection_headline(summary))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
