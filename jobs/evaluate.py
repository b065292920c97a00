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

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout or a working dir

from pipeline import options  # noqa: E402
from pipeline.evaluation.config import EvaluateConfig  # noqa: E402
from pipeline.evaluation.metrics import score_files  # noqa: E402
from pipeline.evaluation.report import format_tables, write_evaluation  # noqa: E402
from pipeline.progress import evaluation_headline  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    config, _ = options.parse(options.parser(EvaluateConfig, __doc__), EvaluateConfig, argv)
    try:
        config = config.resolved()
        result = score_files(config.predictions, config.annotations, config.backend, config.max_dets,
                             config.panoptic_annotations, config.panoptic_folder)
    except (ValueError, FileNotFoundError, OSError) as e:  # CocoFormatError is a ValueError
        sys.exit(f"evaluate: {e}")
    print(format_tables(result))
    for warning in result["report"]["warnings"]:
        print(f"evaluate: warning: {warning}", file=sys.stderr)
    if config.output:
        result["written"] = write_evaluation(config.output, result)
    print(evaluation_headline(result))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
