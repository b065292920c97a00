"""The synthetic dataset is deterministic and valid."""
from __future__ import annotations

import json

import storage as uri
from pipeline.coco import load_coco
from pipeline.synthetic import CATEGORIES, SyntheticConfig, make_image, make_synthetic


def test_synthetic_is_deterministic_and_valid(tmp_path, tiny_shapes):
    config = SyntheticConfig(min_side=64, max_side=128, max_objects=3, min_object=12, max_object=40)
    again = make_synthetic(str(tmp_path), train=16, val=8, seed=7, config=config)
    for split in ("train", "val"):
        assert uri.read_bytes(again[f"{split}_annotations"]) == uri.read_bytes(tiny_shapes[f"{split}_annotations"])
    assert make_image(8, "train", 0, config)[0] != make_image(7, "train", 0, config)[0]
    dataset = load_coco(tiny_shapes["train_annotations"], tiny_shapes["train_images"])
    assert dataset.dropped_boxes == 0 and len(dataset.images) == 16
    assert {c["id"] for c in dataset.categories} == set(CATEGORIES.values())
    coco = json.loads(uri.read_bytes(tiny_shapes["train_annotations"]))
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        image = next(i for i in coco["images"] if i["id"] == ann["image_id"])
        assert 0 <= x and 0 <= y and x + w <= image["width"] and y + h <= image["height"]
        assert 0 < ann["area"] <= w * h and ann["iscrowd"] == 0
