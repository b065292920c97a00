"""Bulk detection to Parquet with Ray Data; ends with one JSON summary line.

    python jobs/detect.py --images URI --output URI --checkpoint PATH_OR_URI [...]
    ray job submit --working-dir . -- python jobs/detect.py ...

--images is a folder or s3:// prefix (searched recursively for image files), a COCO
annotation .json (its images, with their ids), or a manifest (.txt of URIs, or .parquet /
a folder of .parquet with a `path` column; an S3 Inventory in Parquet works once its
`bucket` and `key` are joined into `path`). Every input becomes one row. Re-running the
same command over the same --output skips the shards already done.
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

from pipeline.cluster.connect import RAY_HELP, use_ray  # noqa: E402
from pipeline.detection import DetectConfig, actors_arg, run_detection  # noqa: E402
from pipeline.paths import absolute  # noqa: E402
from pipeline.progress import detection_headline  # noqa: E402
from pipeline.render import class_names, render_predictions  # noqa: E402


def parse_args(argv: list[str] | None = None) -> tuple[DetectConfig, argparse.Namespace]:
    d = DetectConfig("", "", "")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", required=True, help="folder / s3:// prefix, COCO .json, or manifest .txt/.parquet")
    p.add_argument("--output", required=True, help="folder (path or s3://) for the Parquet part files")
    p.add_argument("--checkpoint", required=True, help="ours, a reference .pth, a Hugging Face folder, or a .onnx graph from jobs/export.py")
    p.add_argument("--image-root", help="for a COCO .json: folder of its file_names (default: the JSON's folder)")
    p.add_argument("--score-threshold", type=float, default=d.score_threshold,
                   help=f"keep boxes scoring at least this (default {d.score_threshold}, as training's validation "
                        "keeps: jobs/evaluate.py then gives the AP training printed; 0 keeps every query)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="images per model call, at most")
    p.add_argument("--window", type=int, help="images an actor groups by canvas at once (default 32 x batch size)")
    p.add_argument("--min-size", type=int, help="shorter side after resizing (default: the checkpoint's input "
                   "contract, what it was trained and validated with; the paper's 800 where it records none)")
    p.add_argument("--max-size", type=int, help="longer side cap after resizing (default: the checkpoint's; 1333)")
    p.add_argument("--max-pixels", type=int, default=d.max_pixels, help="larger images get an error row")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default=d.device,
                   help="auto: GPU actors when the cluster has GPUs now; cuda: ask the autoscaler for GPU nodes "
                        "and wait for them; cpu: CPU actors")
    p.add_argument("--actors", type=actors_arg, help="MIN,MAX model actors (default: one per GPU, or half the CPUs)")
    p.add_argument("--gpus-per-actor", type=float, help="default: 1 on a GPU (--device), else 0")
    p.add_argument("--cpus-per-actor", type=float, default=d.cpus_per_actor, help="also torch threads on CPU")
    p.add_argument("--shard-size", type=int, default=d.shard_size, help="inputs per shard (the unit of resumption)")
    p.add_argument("--rows-per-file", type=int, default=d.rows_per_file,
                   help="rows a write task gathers before writing (a file holds one shard's rows)")
    p.add_argument("--read-attempts", type=int, default=d.read_attempts,
                   help="reads of a file, with backoff, before its row records `unreadable`")
    p.add_argument("--actor-restarts", type=int, default=d.actor_restarts,
                   help="restarts of a model actor that dies (a crash, out of memory, a lost node) before the run "
                        f"stops with a line that says why (default {d.actor_restarts})")
    p.add_argument("--no-retry-errors", dest="retry_errors", action="store_false",
                   help="on a re-run, keep rows whose error is transient (unreadable, inference) instead of "
                        "running their shard again")
    p.add_argument("--resource-wait", type=float, metavar="SECONDS",
                   help="how long to wait for the autoscaler to add what the run needs "
                        "(default: 600 with GPU actors, else 0: stop at once with what is short)")
    p.add_argument("--overwrite", action="store_true", help="delete the output's part files and start fresh")
    p.add_argument("--render", nargs=2, metavar=("K", "DIR"), help="also draw K images with their boxes into DIR")
    p.add_argument("--ray", metavar="local|head|HOST:PORT", help=RAY_HELP)
    args = p.parse_args(argv)
    config = DetectConfig(
        images=args.images, output=args.output, checkpoint=args.checkpoint, image_root=args.image_root,
        score_threshold=args.score_threshold, batch_size=args.batch_size, window=args.window,
        min_size=args.min_size, max_size=args.max_size, max_pixels=args.max_pixels,
        read_attempts=args.read_attempts, actor_restarts=args.actor_restarts, device=args.device,
        actors=args.actors, gpus_per_actor=args.gpus_per_actor, cpus_per_actor=args.cpus_per_actor,
        shard_size=args.shard_size, rows_per_file=args.rows_per_file, retry_errors=args.retry_errors,
        resource_wait_s=args.resource_wait, overwrite=args.overwrite,
    )
    try:
        config.check()
    except ValueError as e:
        p.error(str(e))
    return config, args


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
        summary["rendered"] = render_predictions(summary["output"], int(args.render[0]),
                                                 absolute(args.render[1], "--render"),
                                                 names=class_names(summary["output"], config.images))
    print(detection_headline(summary))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
