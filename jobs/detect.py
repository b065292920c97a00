"""Bulk detection to Parquet with Ray Data; ends with one JSON summary line.

    python jobs/detect.py --images URI --output URI --checkpoint PATH_OR_URI [...]
    ray job submit --working-dir . -- python jobs/detect.py ...

--images is a folder or s3:// prefix (searched recursively for image files), a COCO
annotation .json (its images, with their ids), or a manifest (.txt of URIs, or .parquet
with a `path` column). Every input becomes one row. Re-running the same command over
the same --output skips the images already done.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout or a working dir

import ray  # noqa: E402

from pipeline.cluster import init_ray  # noqa: E402
from pipeline.detection import DetectConfig, run_detection  # noqa: E402
from pipeline.render import render_predictions  # noqa: E402


def parse_args(argv: list[str] | None = None) -> tuple[DetectConfig, argparse.Namespace]:
    d = DetectConfig("", "", "")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", required=True, help="folder / s3:// prefix, COCO .json, or manifest .txt/.parquet")
    p.add_argument("--output", required=True, help="folder (path or s3://) for the Parquet part files")
    p.add_argument("--checkpoint", required=True, help="ours, a reference .pth, or a Hugging Face folder")
    p.add_argument("--image-root", help="for a COCO .json: folder of its file_names (default: the JSON's folder)")
    p.add_argument("--score-threshold", type=float, default=d.score_threshold,
                   help=f"keep boxes scoring at least this (default {d.score_threshold}; 0 keeps all, for evaluation)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="images per model call")
    p.add_argument("--min-size", type=int, default=d.min_size, help="shorter side after resizing")
    p.add_argument("--max-size", type=int, default=d.max_size, help="longer side cap after resizing")
    p.add_argument("--max-pixels", type=int, default=d.max_pixels, help="larger images get an error row")
    p.add_argument("--actors", help="MIN,MAX model actors (default: one per GPU, or half the CPUs)")
    p.add_argument("--gpus-per-actor", type=float, help="default: 1 when the cluster has GPUs, else 0")
    p.add_argument("--cpus-per-actor", type=float, default=d.cpus_per_actor, help="also torch threads on CPU")
    p.add_argument("--rows-per-file", type=int, default=d.rows_per_file, help="rows per Parquet part file")
    p.add_argument("--overwrite", action="store_true", help="delete the output's part files and start fresh")
    p.add_argument("--render", nargs=2, metavar=("K", "DIR"), help="also draw K images with their boxes into DIR")
    args = p.parse_args(argv)
    actors = tuple(int(v) for v in args.actors.split(",")) if args.actors else None
    if actors is not None and (len(actors) != 2 or not 1 <= actors[0] <= actors[1]):
        p.error("--actors takes MIN,MAX with 1 <= MIN <= MAX")
    config = DetectConfig(
        images=args.images, output=args.output, checkpoint=args.checkpoint, image_root=args.image_root,
        score_threshold=args.score_threshold, batch_size=args.batch_size, min_size=args.min_size,
        max_size=args.max_size, max_pixels=args.max_pixels, actors=actors, gpus_per_actor=args.gpus_per_actor,
        cpus_per_actor=args.cpus_per_actor, rows_per_file=args.rows_per_file, overwrite=args.overwrite,
    )
    return config, args


def main(argv: list[str] | None = None) -> None:
    config, args = parse_args(argv)
    init_ray()
    summary = run_detection(config)
    ray.shutdown()
    if args.render:
        summary["rendered"] = render_predictions(config.output, int(args.render[0]), args.render[1])
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
