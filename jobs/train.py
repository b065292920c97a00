"""Train DETR on a COCO-format dataset with Ray Train; ends with one JSON summary line.

    python jobs/train.py --annotations ANN --images ROOT --storage URI --name RUN [...]
    python jobs/submit.py -- python jobs/train.py ...   (to a Ray head: docs/cluster.md)

Re-running the same command (same --storage and --name) resumes from the latest checkpoint.
Every option can also come from a YAML file (--config run.yaml; --print-config writes one), and
the run folder keeps the options it ran with (RUN/config.yaml).
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
from pipeline.cluster.resources import ClusterTooSmall  # noqa: E402
from pipeline.progress import dry_run_headline, training_headline  # noqa: E402
from pipeline.training.config import TrainConfig  # noqa: E402
from pipeline.training.preflight import dry_run  # noqa: E402
from pipeline.training.run import run_training  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    """TrainConfig's options (pipeline/training/config.py), and the job's own flags."""
    p = options.parser(TrainConfig, __doc__)
    p.add_argument("--dry-run", action="store_true",
                   help="check the annotations, a sample of the image files, the model, storage and resources; "
                        "print a JSON summary and exit (0 when the run could start) without training")
    p.add_argument("--check-all-files", action="store_true", help="with --dry-run: check every image file")
    p.add_argument("--ray", metavar="local|head|HOST:PORT", help=RAY_HELP)
    return p


def main() -> None:
    config, args = options.parse(build_parser(), TrainConfig)
    use_ray(args.ray)
    try:
        config = config.resolved()  # relative paths: against the folder the job started from
    except ValueError as e:
        sys.exit(f"train: {e}")
    if args.dry_run:
        summary = dry_run(config, check_all_files=args.check_all_files)
        print(dry_run_headline(summary))
        print(json.dumps(summary))
        sys.exit(0 if summary["ok"] else 1)
    try:
        summary = run_training(config)  # checks the run and its data, then starts (or joins) Ray
    except (ValueError, OSError, ClusterTooSmall) as e:  # bad input or a cluster too small: one line
        ray.shutdown()
        sys.exit(f"train: {e}")
    ray.shutdown()  # flush the workers' log lines before the summary
    print(training_headline(summary))
    print(json.dumps(summary, default=str))


if __name__ == "__main__":
    main()
