"""Write a COCO-format synthetic shapes dataset; ends with one JSON summary line.

    python jobs/make_synthetic.py --out DIR --train N --val M --seed S

Writes DIR/train/*.jpg, DIR/val/*.jpg, DIR/annotations/{train,val}.json (DIR may be s3://).
With --stuff, a background of stuff regions (sky, ground) annotated too, and the panoptic ground
truth: DIR/annotations/panoptic_{train,val}.json and a PNG per image in panoptic_{train,val}/.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.synthetic import SyntheticConfig, make_synthetic  # noqa: E402


def main() -> None:
    d = SyntheticConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder or s3:// prefix")
    p.add_argument("--train", type=int, default=200, help="training images")
    p.add_argument("--val", type=int, default=50, help="validation images")
    p.add_argument("--seed", type=int, default=0, help="same seed, same dataset")
    p.add_argument("--min-side", type=int, default=d.min_side, help="smallest image side (px)")
    p.add_argument("--max-side", type=int, default=d.max_side, help="largest image side (px)")
    p.add_argument("--max-objects", type=int, default=d.max_objects, help="shapes per image: 0..this")
    p.add_argument("--stuff", action="store_true",
                   help="a background of stuff regions (sky, ground), also annotated, and panoptic ground truth")
    a = p.parse_args()
    config = SyntheticConfig(min_side=a.min_side, max_side=a.max_side, max_objects=a.max_objects, stuff=a.stuff)
    print(json.dumps(make_synthetic(a.out, a.train, a.val, a.seed, config)))


if __name__ == "__main__":
    main()
