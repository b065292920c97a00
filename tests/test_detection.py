"""Bulk detection: every input exactly once, bad files as error rows, resume, S3, invariance."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.io import decode_image

from model import PostProcess, build_detr, load_checkpoint, save_checkpoint
from model import uri as uris
from pipeline import predictions
from pipeline.detection import DetectConfig, Detector, list_inputs, load_images, run_detection

from .corpus import rotated_photo, write_corpus

REPO = Path(__file__).resolve().parents[1]
SMALL = {"min_size": 96, "max_size": 160}  # resize for fast CPU tests


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    torch.manual_seed(0)
    return save_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "tiny.pt"), build_detr("detr-tiny", num_classes=12))


def write_pictures(folder: Path, count: int, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        h, w = int(rng.integers(60, 200)), int(rng.integers(60, 200))
        path = folder / f"img{i:04d}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def detect(images: str, output: str, checkpoint: str, **overrides) -> dict:
    settings = dict(SMALL, score_threshold=0.0, actors=(1, 1), batch_size=4, rows_per_file=5)
    settings.update(overrides)
    return run_detection(DetectConfig(images=images, output=output, checkpoint=checkpoint, **settings))


def test_bad_inputs_each_get_exactly_one_row(ray_cluster, checkpoint, tmp_path):
    expected = write_corpus(tmp_path / "images")
    (tmp_path / "images" / "notes.txt").write_text("not an image extension: not an input")
    summary = detect(str(tmp_path / "images"), str(tmp_path / "out"), checkpoint, max_pixels=50_000_000)
    rows = {Path(r["path"]).name: r for r in predictions.read_predictions(str(tmp_path / "out")).to_pylist()}
    assert sorted(rows) == sorted(expected)
    assert summary["rows"] == summary["inputs"] == len(expected) and summary["duplicates"] == summary["missing"] == 0
    for name, kind in expected.items():
        row = rows[name]
        if kind is None:
            assert row["error"] is None, (name, row["error"])
            assert len(row["boxes"]) == len(row["scores"]) == len(row["labels"]) == 20  # threshold 0: every query
            assert row["width"] > 0 and row["height"] > 0
        else:
            assert row["error"].startswith(kind + ":"), (name, row["error"])
            assert row["boxes"] is None and row["scores"] is None
    assert (rows["rotated.jpg"]["width"], rows["rotated.jpg"]["height"]) == rotated_photo()[1]  # displayed orientation
    assert (rows["wide.png"]["width"], rows["wide.png"]["height"]) == (3000, 3)
    boxes = np.array(rows["rotated.jpg"]["boxes"])
    assert boxes[:, [0, 2]].max() <= 60 + 1e-3 and boxes[:, [1, 3]].max() <= 120 + 1e-3  # in displayed pixels
    assert summary["errors"] == {"empty": 1, "undecodable": 2, "too_large": 1}


def test_rows_equal_the_model_called_directly(ray_cluster, checkpoint, tmp_path):
    paths = write_pictures(tmp_path / "images", 3)
    detect(str(tmp_path / "images"), str(tmp_path / "out"), checkpoint, score_threshold=0.05)
    table = predictions.read_predictions(str(tmp_path / "out"))
    model, config = load_checkpoint(checkpoint)
    postprocess = PostProcess(0.05, top_k=config.num_queries)
    for row in table.to_pylist():
        image = decode_image(str(row["path"]))  # torchvision's own decoder and resize, not the pipeline's
        resized = TF.resize(image, [SMALL["min_size"]], max_size=SMALL["max_size"], antialias=True)
        pixels = TF.normalize(TF.to_dtype(resized, torch.float32, scale=True), config.image_mean, config.image_std)
        with torch.inference_mode():
            (want,) = postprocess(model(pixels), torch.tensor([image.shape[1:]]))
        assert (row["width"], row["height"]) == (image.shape[2], image.shape[1])
        assert row["labels"] == want["labels"].tolist()
        np.testing.assert_allclose(row["scores"], want["scores"].numpy(), atol=1e-4)
        np.testing.assert_allclose(np.array(row["boxes"]).reshape(-1, 4), want["boxes"].numpy(), atol=1e-3)
    assert len(table) == len(paths)


def test_batch_invariance(checkpoint, tmp_path):
    paths = write_pictures(tmp_path / "images", 3, seed=1)
    Image.open(paths[0]).save(tmp_path / "images" / "same_shape.png")  # a same-shape neighbour
    inputs = list_inputs(str(tmp_path / "images"))
    batch = load_images({k: np.array(v, dtype=object) for k, v in inputs.to_pydict().items()}, **SMALL,
                        max_pixels=10**8)
    saved = torch.load(checkpoint, weights_only=True)
    detector = Detector((saved["config"], saved["model"]), "test", score_threshold=0.0, cpus=1)
    together = detector(batch).to_pylist()
    for i in range(len(together)):
        alone = detector({k: v[i:i + 1] for k, v in batch.items()}).to_pylist()[0]
        np.testing.assert_allclose(alone["scores"], together[i]["scores"], atol=1e-4)
        np.testing.assert_allclose(np.array(alone["boxes"]), np.array(together[i]["boxes"]), atol=1e-4)
    # the check can fail: zero padding (what batching mixed sizes would do) moves the scores
    net = detector.model
    first, second = (torch.from_numpy(batch["image"][i]).float() / 255 for i in (0, 1))
    norm = lambda x: (x - detector.mean[0]) / detector.std[0]  # noqa: E731
    with torch.inference_mode():
        padded = net([norm(first), norm(second)])["pred_logits"][0]
        single = net(norm(first))["pred_logits"][0]
    assert (padded - single).abs().max() > 1e-4
