"""The paper's box-aware augmentation keeps boxes on their objects."""
from __future__ import annotations

import random

import numpy as np
import torch

from pipeline.training.augment import AugmentConfig, train_transform, transform_sample


def test_augmentation_moves_boxes_with_the_image():
    """A white square on black: after any augmentation its box frames the white pixels, and a
    square cropped away takes its label with it."""
    image = torch.zeros(3, 120, 160, dtype=torch.uint8)
    image[:, 30:70, 100:140] = 255
    box = np.array([[100, 30, 140, 70]], dtype=np.float32)
    transform = train_transform(AugmentConfig().scaled(0.25))
    random.seed(0)
    torch.manual_seed(0)
    kept = 0
    for _ in range(30):
        out, boxes, labels, _ = transform_sample(image, box, np.array([5]), transform)
        height, width = out.shape[-2:]
        assert max(height, width) <= AugmentConfig().scaled(0.25).max_size
        white = (out[0] > 127).nonzero()
        if len(boxes) == 0:  # cropped away, label dropped with it
            assert len(labels) == 0 and len(white) == 0
            continue
        cx, cy, w, h = boxes[0] * np.array([width, height, width, height])
        framed = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
        seen = np.array([white[:, 1].min(), white[:, 0].min(), white[:, 1].max() + 1, white[:, 0].max() + 1])
        np.testing.assert_allclose(framed, seen, atol=1.5)  # resizing blurs the square's edge by a pixel
        assert labels.tolist() == [5]
        kept += 1
    assert kept > 15  # most draws keep the square: the check above ran
