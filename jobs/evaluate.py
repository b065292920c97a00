"""COCO bbox metrics of a predictions table; ends with one JSON summary line.

    python jobs/evaluate.py --predictions URI --annotations URI [--output URI]

Prints the 12 standard stats and a per-category AP table; with --output writes
metrics.json and metrics.parquet there. The last line's `metrics` object holds the 12
stats (AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl); `report` counts
what did not match (missed images, rows of unknown images, unknown categories, error rows).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout or a working dir

from pipeline.evaluation import evaluate_files, format_tables, write_evaluation  # noqa: E402
from pipeline.progress import evaluation_headline  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--predictions", required=True, help="a Parquet file or folder of part files (path or s3://)")
    p.add_argument("--annotations", required=True, help="COCO annotation JSON (path or s3://)")
    p.add_argument("--output", help="folder (path or s3://) for metrics.json and metrics.parquet")
    args = p.parse_args(argv)
    result = evaluate_files(args.predictions, args.annotations)
    print(format_tables(result))
    if args.output:
        result["written"] = write_evaluation(args.output, result)
    print(evaluation_headline(result))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
