"""The model actor: an image's detections do not depend on its batch (nor, with a masked
backbone, on its padding)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from model.segmentation import build_detr
from pipeline.detection.actor import DetectorActor
from pipeline.detection.read import fetch
from tests.corpus import write_pictures
from tests.pipeline.detection import CONTRACT


def _fetched(folder: Path) -> pa.Table:
    paths = sorted(str(p) for p in folder.iterdir())
    rows = pa.table({"path": pa.array(paths, pa.large_string()), "image_id": pa.nulls(len(paths), pa.int64()),
                     "shard": pa.array([0] * len(paths), pa.int32())})
    return fetch(rows, CONTRACT, max_pixels=10**8)


def _by_box(row: dict) -> np.ndarray:
    """[label, score, x0, y0, x1, y1] per detection, in the order of their (rounded) boxes."""
    table = np.column_stack([row["labels"], row["scores"], np.array(row["boxes"]).reshape(-1, 4)])
    return table[np.lexsort(np.round(table[:, 2:], 1).T[::-1])]


def test_batch_invariance(checkpoint, tmp_path):
    write_pictures(tmp_path / "images", 7, seed=1)  # 7 sizes, mixed orientations: a few canvases
    rows = _fetched(tmp_path / "images")
    saved = torch.load(checkpoint, weights_only=True)
    detector = DetectorActor((saved["config"], saved["model"]), "test", score_threshold=0.0, batch_size=8,
                             contract=CONTRACT.to_dict(), cpus=1)
    together = detector(rows).to_pylist()
    assert len(set(zip(rows["canvas_height"].to_pylist(), rows["canvas_width"].to_pylist()))) < len(together)
    calls = sum(r["call_share"] for r in together)
    assert calls < len(together)  # images of one canvas shared a model call
    for i in range(len(together)):
        alone = detector(rows.slice(i, 1)).to_pylist()[0]
        assert alone["call_share"] == 1.0
        a, b = _by_box(alone), _by_box(together[i])  # a random model ties scores: compare as sets
        np.testing.assert_array_equal(a[:, 0], b[:, 0])
        np.testing.assert_allclose(a[:, 1], b[:, 1], atol=1e-5)
        np.testing.assert_allclose(a[:, 2:], b[:, 2:], atol=1e-2)
    # the check can fail: without detr-tiny's masked backbone, padding an image onto another
    # canvas (what batching by the largest image would do) moves its scores
    image = torch.rand(3, 96, 120)
    wide = torch.nn.functional.pad(image, (0, 160 - 120))
    mask = torch.zeros(1, 96, 160, dtype=torch.bool)
    mask[..., 120:] = True
    for masked in (True, False):
        model = build_detr("detr-tiny", num_classes=12, masked_backbone=masked).eval()
        with torch.inference_mode():
            on_canvas = model(torch.nn.functional.pad(image, (0, 128 - 120))[None], mask[..., :128])["pred_logits"]
            on_larger = model(wide[None], mask)["pred_logits"]
            alone = model(image[None])["pred_logits"]
        moved = max((on_canvas - on_larger).abs().max(), (on_canvas - alone).abs().max())
        assert moved < 1e-5 if masked else moved > 1e-4, (masked, moved)
