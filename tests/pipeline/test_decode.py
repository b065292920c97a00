"""The one decoder: training and bulk detection see the same pixels of every image."""
from __future__ import annotations

import pyarrow as pa
import torch

from model.contract import InputContract
from model.segmentation import build_detr
from pipeline.detection.actor import Detector
from pipeline.detection.read import fetch
from pipeline.training.stream import read_image
from tests.corpus import write_corpus


def test_training_and_detection_decode_alike(tmp_path):
    expected = write_corpus(tmp_path)
    names = sorted(name for name, kind in expected.items() if kind is None)
    rows = fetch(pa.table({"path": pa.array([str(tmp_path / n) for n in names], pa.large_string()),
                           "image_id": pa.nulls(len(names), pa.int64()),
                           "shard": pa.array([0] * len(names), pa.int32())}), InputContract(), max_pixels=10**8)
    detector = Detector.of_model(build_detr("detr-tiny", num_classes=3).eval(), InputContract(), 0.0, 4)
    detected, failed = detector.decode(rows, ((0, 0), list(range(len(names)))))
    assert not failed
    for i, name in enumerate(names):
        trained = read_image(str(tmp_path / name))
        assert trained.dtype == torch.uint8 and trained.shape[0] == 3, name
        assert torch.equal(trained, detected[i]), name
    transparent = detected[names.index("transparent.png")]
    assert (transparent[:, :, :40] == torch.tensor([255, 0, 0])[:, None, None]).all()  # opaque: as stored
    assert (transparent[:, :, 40:] == 255).all()  # transparent: composited on white, never its stored red
