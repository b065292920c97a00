"""The input contract: resizing as torchvision does, canvases from each image's own size."""
from __future__ import annotations

import json

import torch
import torchvision.transforms.v2 as v2

from model.contract import InputContract

SMALL = InputContract(min_size=96, max_size=160)


def test_contract_resizes_as_torchvision():
    for min_size, max_size in ((120, 200), (160, 267), (800, 1333), (96, 100)):
        for height, width in ((113, 150), (77, 301), (301, 77), (50, 50), (30, 900)):
            want = v2.Resize(min_size, max_size=max_size)(torch.zeros(3, height, width)).shape[1:]
            assert InputContract(min_size, max_size).resized_size(height, width) == tuple(want)
    assert InputContract(120, 200).resized_size(3, 900) == (1, 200)  # torchvision would make it 0 px high


def test_canvases_depend_on_the_image_alone_and_fill_batches(reference_dir):
    coco = json.loads((reference_dir / "coco" / "instances_val2014_100.json").read_text())
    paper = InputContract()
    resized = [paper.resized_size(i["height"], i["width"]) for i in coco["images"]]
    canvases = [paper.canvas_size(h, w) for h, w in resized]
    for (h, w), (ch, cw) in zip(resized, canvases):
        assert h <= ch and w <= cw and ch % 32 == 0 and cw % 32 == 0
        assert (cw >= ch) == (w >= h)  # landscape stays landscape
    assert len(set(resized)) == 45 and len(set(canvases)) == 4  # real photo sizes: 45 shapes, 4 canvases
    padding = sum(ch * cw for ch, cw in canvases) / sum(h * w for h, w in resized)
    assert padding < 1.1
    assert paper.canvas_size(1, 1333) == (800, 1344)  # extreme shapes still get a canvas
    assert SMALL.canvas_size(6, 160) == (96, 160)
