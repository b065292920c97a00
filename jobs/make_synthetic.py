"""Write a COCO-format synthetic shapes dataset; ends with one JSON summary line.

    python jobs/make_synthetic.py --out DIR --train N --val M --seed S

Writes DIR/train/*.jpg, DIR/val/*.jpg, DIR/annotations/{train,val}.json (DIR may be s3://).
With --stuff, a background of stuff regions (sky, ground) annotated too, and the panoptic ground
truth: DIR/annotations/panoptic_{train,val}.json and a PNG per image in panoptic_{train,val}/.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import options  # noqa: E402
from pipeline.synthetic import MakeSyntheticConfig, make_synthetic  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    config, _ = options.parse(options.parser(MakeSyntheticConfig, __doc__), MakeSyntheticConfig, argv)
    try:
        config = options.with_absolute_paths(config)
    except options.PathError as e:
        sys.exit(f"make_synthetic: {e}")
    print(json.dumps(make_synthetic(config.out, config.train, config.val, config.seed, config.images())))


if __name__ == "__main__":
    main()
