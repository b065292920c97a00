"""Bulk detection with a transformers family's folder, local and on S3: the rows are those of the
in-process detector (tests/model/test_families.py: equal to transformers' own), in full batches."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.fs as pafs

import storage as uris
from model.checkpoint import load_checkpoint
from pipeline import predictions
from pipeline.detection.config import DetectConfig
from pipeline.detection.run import run_detection
from pipeline.training.validation import detect_images
from tests.corpus import write_pictures
from tests.families import assert_same_detections, family_folder


def test_a_family_folder_detects_from_s3_into_the_table(ray_cluster, s3_bucket, tmp_path):
    family_folder("rt_detr_v2", tmp_path / "rtdetr")
    folder = f"{s3_bucket}/models/rtdetr"
    fs, path = uris.resolve(folder)
    pafs.copy_files(str(tmp_path / "rtdetr"), path, destination_filesystem=fs)
    paths = write_pictures(tmp_path / "images", 5)
    summary = run_detection(DetectConfig(images=str(tmp_path / "images"), output=str(tmp_path / "out"),
                                         checkpoint=folder, actors=(1, 1), batch_size=5, window=8))
    assert summary["rows"] == summary["inputs"] == 5 and summary["batch_fill"] == 1.0  # one canvas: one full batch
    table = predictions.read_predictions(str(tmp_path / "out")).sort_by("path")
    model, _ = load_checkpoint(str(tmp_path / "rtdetr"))
    expected = detect_images(model, [{"path": str(p), "image_id": None} for p in sorted(paths)], model.contract, 2)
    assert table["path"].to_pylist() == expected["path"].to_pylist()
    for row, alone in zip(table.to_pylist(), expected.to_pylist()):
        assert row["error"] is None
        assert_same_detections(row, alone, score_tol=1e-5, box_tol=1e-3)
    assert predictions.run_metadata(str(tmp_path / "out"))["preset"] == "rt_detr_v2"


def test_rf_detr_masks_through_detect_and_evaluate(ray_cluster, tmp_path):
    """An RF-DETR instance segmentation folder: bulk detection writes each detection's mask (those
    of the in-process detector, tests/model/test_family_masks.py: transformers' own), and evaluation
    scores them as mask AP beside the boxes' AP."""
    from pipeline.evaluation.metrics import score_files
    from pipeline.synthetic import SyntheticConfig, make_synthetic

    shapes = make_synthetic(str(tmp_path / "shapes"), train=0, val=4, seed=3,
                            config=SyntheticConfig(min_side=64, max_side=96, max_objects=3))
    family_folder("rf_detr", tmp_path / "segm", masks=True)
    summary = run_detection(DetectConfig(images=shapes["val_images"], output=str(tmp_path / "out"),
                                         checkpoint=str(tmp_path / "segm"), actors=(1, 1), batch_size=4, window=8))
    assert summary["rows"] == summary["inputs"] == 4
    table = predictions.read_predictions(str(tmp_path / "out")).sort_by("path")
    model, _ = load_checkpoint(str(tmp_path / "segm"))
    records = [{"path": p, "image_id": None} for p in table["path"].to_pylist()]
    expected = detect_images(model, records, model.contract, 4)
    assert table["masks"].to_pylist() == expected["masks"].to_pylist()
    assert all(len(m) == len(s) > 0 for m, s in zip(table["masks"].to_pylist(), table["scores"].to_pylist()))
    # every shape of one category, the label the random model gives most, so that masks are scored
    label = Counter(label for labels in table["labels"].to_pylist() for label in labels).most_common(1)[0][0]
    coco = json.loads(Path(shapes["val_annotations"]).read_text())
    coco["categories"] = [{"id": label, "name": "shape"}]
    for annotation in coco["annotations"]:
        annotation["category_id"] = label
    Path(shapes["val_annotations"]).write_text(json.dumps(coco))
    result = score_files(str(tmp_path / "out"), shapes["val_annotations"])
    assert set(result["segm"]["metrics"]) == set(result["metrics"])  # AP, AP50, ... of the masks
    assert result["segm"]["detections"] > 0
