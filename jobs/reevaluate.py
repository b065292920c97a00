"""Scheduled re-evaluation: detect + score every new checkpoint on a fixed evaluation set.

    python jobs/reevaluate.py --checkpoints URI --images ROOT --annotations ANN --history URI \
        [--fail-on-regression PCT] [--every 6h]

Checkpoints already in the history for this evaluation set (same weights, annotation file
and parameters) are skipped, so a run with nothing new does no detection. Each run ends
with one JSON line; with --fail-on-regression the exit code is 3 when a new checkpoint's
AP is more than PCT % below the previous or the best earlier one. Every option can also come from
a YAML file (--config; --print-config writes one).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout or a working dir

from pipeline.cluster.token import use_token  # noqa: E402

use_token()  # the token of the user's clusters, before Ray is imported: Ray reads its mode once, at import

import ray  # noqa: E402

from pipeline import options  # noqa: E402
from pipeline.cluster.connect import RAY_HELP, use_ray  # noqa: E402
from pipeline.evaluation.config import ReevaluateConfig  # noqa: E402
from pipeline.evaluation.reevaluation import reevaluate  # noqa: E402
from pipeline.progress import reevaluation_headline  # noqa: E402

REGRESSION_EXIT = 3


def duration_seconds(text: str) -> float:
    """'90s', '30m', '6h', '1d' -> seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"expected a duration like 30m, 6h or 1d, got {text!r}")
    return float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def main(argv: list[str] | None = None) -> int:
    p = options.parser(ReevaluateConfig, __doc__)
    p.add_argument("--fail-on-regression", type=float, metavar="PCT",
                   help=f"exit {REGRESSION_EXIT} when AP drops more than PCT %% (relative; sets --regression-pct)")
    p.add_argument("--every", type=duration_seconds, help="keep running, once per DURATION (30m, 6h, 1d)")
    p.add_argument("--ray", metavar="local|head|HOST:PORT", help=RAY_HELP)
    config, args = options.parse(p, ReevaluateConfig, argv)
    if args.fail_on_regression is not None:
        if args.fail_on_regression < 0:
            p.exit(2, f"reevaluate: --fail-on-regression must be at least 0, not {args.fail_on_regression}\n")
        config = dataclasses.replace(config, regression_pct=args.fail_on_regression)
    use_ray(args.ray)
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
