"""Training's validation is the detection path: sharded over workers, and equal to jobs/detect.py."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from model.checkpoint import load_checkpoint
from pipeline import predictions
from pipeline.coco import load_coco
from pipeline.detection.config import DetectConfig
from pipeline.detection.run import run_detection
from pipeline.evaluation.metrics import evaluate, score_files
from pipeline.evaluation.scoring import CocoScorer
from pipeline.training.stream import records_of
from pipeline.training.validation import detect_images, gather, validate
from tests import SHIPPED


def _validate_worker(rank: int, world_size: int, port: int, shapes: dict, folder: str) -> None:
    import torch.distributed as dist

    if world_size > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        model, _ = load_checkpoint(str(SHIPPED))  # trained: its detections and AP are not all alike
        records = records_of(load_coco(shapes["val_annotations"], shapes["val_images"]))
        tables = gather(detect_images(model, records[rank::world_size], model.contract, 3), world_size)
        scorer = CocoScorer(load_coco(shapes["val_annotations"], shapes["val_images"]).raw) if rank == 0 else None
        metrics = validate(model, records, model.contract, 3, scorer, rank, world_size)
        if rank == 0:
            pq.write_table(pa.concat_tables(tables).sort_by("image_id"), Path(folder, f"{world_size}.parquet"))
            Path(folder, f"{world_size}.json").write_text(json.dumps(metrics))
    finally:
        if world_size > 1:
            dist.destroy_process_group()


def test_sharded_validation_equals_one_worker(demo_val, tmp_path):
    """Two workers each detect every other image; what rank 0 gathers and scores is what one
    worker detects alone, row for row."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _validate_worker(0, 1, port, demo_val, str(tmp_path))
    mp.start_processes(_validate_worker, args=(2, port, demo_val, str(tmp_path)), nprocs=2, start_method="spawn")
    one, two = (pq.read_table(tmp_path / f"{n}.parquet").to_pylist() for n in (1, 2))
    assert [r["image_id"] for r in one] == [r["image_id"] for r in two] == list(range(1, 13))
    assert sum(len(r["scores"]) for r in one) > 12  # the checkpoint finds shapes
    for a, b in zip(one, two):
        assert a["labels"] == b["labels"]
        np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-6)
        np.testing.assert_allclose(a["boxes"], b["boxes"], atol=1e-4)
    metrics = [json.loads((tmp_path / f"{n}.json").read_text()) for n in (1, 2)]
    assert metrics[0] == metrics[1] and metrics[0]["AP"] > 0.2


def test_validation_detections_are_bulk_detections(ray_cluster, demo_val, tmp_path):
    """The AP training prints for a checkpoint is the AP of jobs/detect.py then jobs/evaluate.py
    with it, at their defaults (sizes: the checkpoint's contract; the default score threshold):
    the same detections, image for image."""
    model, _ = load_checkpoint(str(SHIPPED))
    dataset = load_coco(demo_val["val_annotations"], demo_val["val_images"])
    validation = detect_images(model, dataset.records(), model.contract, batch_size=8)
    output = str(tmp_path / "predictions")
    run_detection(DetectConfig(images=demo_val["val_annotations"], image_root=demo_val["val_images"],
                               output=output, checkpoint=str(SHIPPED), actors=(1, 1)))
    detected = {r["image_id"]: r for r in predictions.read_predictions(output).to_pylist()}
    assert len(detected) == validation.num_rows == 12
    for row in validation.to_pylist():
        other = detected[row["image_id"]]
        assert row["labels"] == other["labels"] and row["path"] == other["path"]
        np.testing.assert_allclose(row["scores"], other["scores"], atol=1e-4)
        np.testing.assert_allclose(row["boxes"], other["boxes"], atol=1e-2)
    validated = evaluate([validation], CocoScorer(dataset.raw))["metrics"]
    assert validated == score_files(output, demo_val["val_annotations"])["metrics"]
    assert validated["AP"] > 0.2  # a trained checkpoint: the equality is not that of two empty sets
