"""Scheduled re-evaluation: detect + score every new checkpoint on a fixed evaluation set.

    python jobs/reevaluate.py --checkpoints URI --images ROOT --annotations ANN --history URI \\
        [--fail-on-regression PCT] [--every 6h]

Checkpoints already in the history for this evaluation set (same weights, annotation file
and parameters) are skipped, so a run with nothing new does no detection. Each run ends
with one JSON line; with --fail-on-regression the exit code is 3 when a new checkpoint's
AP is more than PCT % below the previous or the best earlier one. Every option can also come from
a YAML file (--config; --print-config writes one).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout or a working dir

from pipeline.cluster.token import use_token  # noqa: E402

use_token()  # the token of the user's clusters, before Ray is imported: Ray reads its mode once, at import

import ray  # noqa: E402

from pipeline import options  # noqa: E402
from pipeline.cluster.connect import RAY_HELP, use_ray  # noqa: E402
from pipeline.evaluation.config import REGRESSION_EXIT, ReevaluateConfig  # noqa: E402
from pipeline.evaluation.reevaluation import reevaluate  # noqa: E402
from pipeline.progress import reevaluation_headline  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = options.parser(ReevaluateConfig, __doc__)
    p.add_argument("--ray", metavar="local|head|HOST:PORT", help=RAY_HELP)
    config, args = options.parse(p, ReevaluateConfig, argv)
    use_ray(args.ray)
    while True:
        started = time.time()
        try:
            summary = reevaluate(config)
        except (ValueError, OSError) as e:  # bad input, or images mostly unreadable: one line, no history row
            ray.shutdown()
            sys.exit(f"reevaluate: {e}")
        if config.every is None and ray.is_initialized():
            ray.shutdown()  # before the JSON line: Ray's own log lines must not follow it
        print(reevaluation_headline(summary))
        print(json.dumps(summary), flush=True)
        failed = config.fail_on_regression is not None and summary["regressions"]
        if config.every is None:
            return REGRESSION_EXIT if failed else 0
        time.sleep(max(0.0, config.every - (time.time() - started)))


if __name__ == "__main__":
    sys.exit(main())
