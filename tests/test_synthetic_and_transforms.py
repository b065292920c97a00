"""The synthetic dataset is deterministic and valid; augmentation keeps boxes on their objects."""
from __future__ import annotations

import json
import random

import numpy as np
import torch

from model import uri
from pipeline.coco import load_coco
from pipeline.synthetic import CATEGORIES, SyntheticConfig, make_image, make_synthetic
from pipeline.transforms import AugmentConfig, train_transform, transform_sample


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


def test_augmentation_moves_boxes_with_the_image():
    """A white square on black: after any augmentation its box still frames the white pixels."""
    image = torch.zeros(3, 120, 160, dtype=torch.uint8)
    image[:, 30:70, 100:140] = 255
    box = np.array([[100, 30, 140, 70]], dtype=np.float32)
    transform = train_transform(AugmentConfig().scaled(0.25))
    random.seed(0)
    torch.manual_seed(0)
    for _ in range(30):
        out, boxes, labels = transform_sample(image, box, np.array([5]), transform)
        height, width = out.shape[-2:]
        assert max(height, width) <= AugmentConfig().scaled(0.25).max_size
        if len(boxes) == 0:  # cropped away, label dropped with it
            assert len(labels) == 0
            continue
        cx, cy, w, h = boxes[0] * np.array([width, height, width, height])
        inside = out[0, int(cy - h / 2) + 2 : int(cy + h / 2) - 2, int(cx - w / 2) + 2 : int(cx + w / 2) - 2]
        assert inside.numel() == 0 or inside.float().mean() > 200
        assert labels.tolist() == [5]


def test_contract_resizes_as_torchvision(tiny_shapes):
    import torchvision.transforms.v2 as v2

    from model import InputContract
    from pipeline.decode import decode_image

    image = decode_image(uri.read_bytes(f"{tiny_shapes['val_images']}/000000.jpg"))
    assert image.dtype == torch.uint8 and image.shape[0] == 3
    for min_size, max_size in ((120, 200), (160, 267), (800, 1333), (96, 100)):
        for height, width in ((image.shape[1], image.shape[2]), (77, 301), (301, 77), (50, 50), (30, 900)):
            want = v2.Resize(min_size, max_size=max_size)(torch.zeros(3, height, width)).shape[1:]
            assert InputContract(min_size, max_size).resized_size(height, width) == tuple(want)
    assert InputContract(120, 200).resized_size(3, 900) == (1, 200)  # torchvision would make it 0 px high


def test_unreadable_training_image_is_named(tmp_path):
    import pytest

    from pipeline.data import _load_and_augment

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    batch = {"path": [str(bad)], "image_id": [1], "boxes": [[1.0, 1.0, 5.0, 5.0]], "labels": [2]}
    with pytest.raises(ValueError, match="cannot read training image .*broken.jpg"):
        _load_and_augment(batch, AugmentConfig().scaled(0.25))
