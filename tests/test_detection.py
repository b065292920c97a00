"""Bulk detection: every input exactly once, bad files as error rows, resume, S3, invariance."""
from __future__ import annotations

import json
import math
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
from pipeline.detection import DetectConfig, Detector, list_inputs, load_images, resize, run_detection

from .corpus import rotated_photo, write_corpus

REPO = Path(__file__).resolve().parents[1]
SMALL = {"min_size": 96, "max_size": 160}  # resize for fast CPU tests


def _tokens(row: dict) -> int:
    """Feature-map cells (stride 16) of an image as detect() resizes it (SMALL's sizes)."""
    _, height, width = resize(torch.zeros(3, row["height"], row["width"]), **SMALL).shape
    return math.ceil(height / 16) * math.ceil(width / 16)


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
            # threshold 0: every query. Two-stage detr-tiny has min(20, feature-map tokens of the
            # padded batch): fewer than 20 only for an image too small for 20 tokens
            assert len(row["boxes"]) == len(row["scores"]) == len(row["labels"]) in (20, min(20, _tokens(row)))
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


def test_coco_and_manifest_inputs(ray_cluster, checkpoint, tiny_shapes, tmp_path):
    val = list_inputs(tiny_shapes["val_annotations"], tiny_shapes["val_images"]).to_pylist()
    annotation = json.loads(Path(tiny_shapes["val_annotations"]).read_text())
    ids = {img["file_name"]: img["id"] for img in annotation["images"]}
    assert {Path(r["path"]).name: r["image_id"] for r in val} == ids

    summary = detect(tiny_shapes["val_annotations"], str(tmp_path / "coco"), checkpoint,
                     image_root=tiny_shapes["val_images"])
    rows = predictions.read_predictions(str(tmp_path / "coco")).to_pylist()
    assert summary["rows"] == 8 and summary["errors"] == {}
    assert {Path(r["path"]).name: r["image_id"] for r in rows} == ids

    manifest = tmp_path / "list.txt"
    first, second = (r["path"] for r in val[:2])
    manifest.write_text(f"# a comment\n{first}\n{second}\n{first}\n\n{tmp_path}/gone.jpg\n")
    summary = detect(str(manifest), str(tmp_path / "manifest"), checkpoint)
    assert summary["inputs"] == summary["rows"] == 3 and summary["errors"] == {"missing": 1}


def test_resume_after_the_driver_is_killed(ray_cluster, checkpoint, tmp_path):
    """Kill the job's driver once part files exist; the re-run completes without duplicates."""
    write_pictures(tmp_path / "images", 60, seed=2)
    out = tmp_path / "out"
    env = dict(os.environ, RAY_ADDRESS=ray_cluster.get_runtime_context().gcs_address)
    proc = subprocess.Popen(
        [sys.executable, "jobs/detect.py", "--images", str(tmp_path / "images"), "--output", str(out),
         "--checkpoint", checkpoint, "--min-size", "128", "--max-size", "200", "--batch-size", "2",
         "--rows-per-file", "4", "--actors", "1,1"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while len(predictions.part_files(str(out))) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = predictions.read_predictions(str(out), ["path"]).num_rows
    assert 0 < before < 60, f"the run should have been cut midway ({before} rows)"

    summary = detect(str(tmp_path / "images"), str(out), checkpoint, min_size=128, max_size=200, score_threshold=0.5)
    assert summary["skipped"] == before and summary["processed"] == 60 - before
    assert summary["rows"] == summary["inputs"] == 60 and summary["duplicates"] == summary["missing"] == 0


def test_refuses_to_mix_runs_unless_overwrite(ray_cluster, checkpoint, tmp_path):
    write_pictures(tmp_path / "images", 2)
    out = str(tmp_path / "out")
    detect(str(tmp_path / "images"), out, checkpoint)
    with pytest.raises(ValueError, match="score_threshold"):
        detect(str(tmp_path / "images"), out, checkpoint, score_threshold=0.5)
    again = detect(str(tmp_path / "images"), out, checkpoint)
    assert again["processed"] == 0 and again["rows"] == 2  # nothing left to do
    fresh = detect(str(tmp_path / "images"), out, checkpoint, score_threshold=0.5, overwrite=True)
    assert fresh["processed"] == fresh["rows"] == 2


def test_job_reads_and_writes_s3(s3_bucket, checkpoint, tmp_path):
    paths = write_pictures(tmp_path / "images", 3, seed=3)
    for path in paths:
        uris.write_bytes(f"{s3_bucket}/photos/{path.parent.name}/{path.name}", path.read_bytes())
    uris.write_bytes(f"{s3_bucket}/photos/broken.jpg", b"\xff\xd8 not really")
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, "jobs/detect.py", "--images", f"{s3_bucket}/photos", "--output", f"{s3_bucket}/preds",
         "--checkpoint", checkpoint, "--min-size", "96", "--max-size", "160", "--actors", "1,1",
         "--render", "2", str(tmp_path / "pictures")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["inputs"] == summary["rows"] == 4 and summary["errors"] == {"undecodable": 1}
    rows = predictions.read_predictions(f"{s3_bucket}/preds").to_pylist()
    assert sorted(r["path"] for r in rows) == sorted(
        [f"{s3_bucket}/photos/images/{p.name}" for p in paths] + [f"{s3_bucket}/photos/broken.jpg"])
    run = predictions.run_metadata(f"{s3_bucket}/preds")
    assert run["preset"] == "detr-tiny" and run["min_size"] == 96 and run["model"].startswith("sha256:")
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in json.dumps(run)
    assert len(summary["rendered"]) == 2 and all(Path(p).stat().st_size > 0 for p in summary["rendered"])
    files = predictions.part_files(f"{s3_bucket}/preds")
    fs, _ = uris.resolve(s3_bucket)
    assert pq.read_schema(fs.open_input_file(files[0])).field("boxes").type == predictions.SCHEMA.field("boxes").type
