"""Masks through the jobs: bulk detection writes each box's mask as RLE at the image's size (the
reference's PostProcessSegm, a chunk of masks at a time), box-only rows keep the column empty,
and evaluate scores segm AP, hotcoco and faster-coco-eval equal to pycocotools. Detection,
evaluation and re-evaluation on Ray with a mask checkpoint: tests/pipeline/evaluation/test_panoptic.py."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from model.checkpoint import load_checkpoint
from model.contract import InputContract
from model.postprocess import PostProcess
from pipeline import predictions
from pipeline.detection.actor import Detector, to_canvas
from pipeline.detection.read import fetch
from pipeline.evaluation.metrics import score_files
from pipeline.images import decode_image
from pipeline.masks import decode, encode
from pipeline.synthetic import SyntheticConfig, make_synthetic
from tests import SHIPPED

CONTRACT = InputContract(160, 267)  # the shipped detr-tiny's


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> dict:
    return make_synthetic(str(tmp_path_factory.mktemp("shapes")), train=0, val=6, seed=11,
                          config=SyntheticConfig(min_side=96, max_side=192, max_objects=4))


@pytest.fixture(scope="module")
def segm_model():
    """The shipped box model with a new (random) mask head: masks to check, not to score well."""
    torch.manual_seed(0)
    model, _ = load_checkpoint(str(SHIPPED), masks=True)
    return model


def _rows(shapes: dict) -> pa.Table:
    coco = json.loads(Path(shapes["val_annotations"]).read_text())
    paths = [str(Path(shapes["val_images"]) / i["file_name"]) for i in coco["images"]]
    return fetch(pa.table({"path": pa.array(paths, pa.large_string()),
                           "image_id": pa.array([i["id"] for i in coco["images"]], pa.int64()),
                           "shard": pa.array([0] * len(paths), pa.int32())}), CONTRACT, 10**8)


def _reference_masks(model, path: str, height: int, width: int) -> np.ndarray:
    """The reference's rule (PostProcessSegm) on one image on its canvas, written out: the kept
    queries' mask logits upsampled (bilinear) to the canvas, thresholded, cropped to the image as
    fed, resized (nearest) to its original size."""
    pixels = decode_image(Path(path).read_bytes())
    canvas = CONTRACT.canvas_of(height, width)
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (CONTRACT.image_mean, CONTRACT.image_std))
    batch, mask = to_canvas([pixels], canvas, CONTRACT, mean, std)
    with torch.inference_mode():
        out = model(batch, mask)
        [found] = PostProcess(0.05, top_k=model.config.num_queries)(out, torch.tensor([[height, width]]))
        logits = F.interpolate(out["pred_masks"][:, found["queries"]], size=canvas, mode="bilinear",
                               align_corners=False)
        fed_h, fed_w = CONTRACT.resized_size(height, width)
        kept = (logits.sigmoid() > 0.5)[:, :, :fed_h, :fed_w].float()
        return F.interpolate(kept, size=(height, width), mode="nearest")[0].byte().numpy()


def test_detection_writes_the_reference_masks_of_its_boxes_as_rle(segm_model, shapes):
    table = Detector.of_model(segm_model, CONTRACT, 0.05, batch_size=4)(_rows(shapes)).select(predictions.SCHEMA.names)
    for row in table.to_pylist():
        masks = decode([{"size": [row["height"], row["width"]], "counts": c} for c in row["masks"]],
                       row["width"], row["height"])
        assert len(masks) == len(row["boxes"]) > 0
        assert np.array_equal(masks, _reference_masks(segm_model, row["path"], row["height"], row["width"]))


def test_a_box_checkpoint_leaves_the_masks_column_empty(shapes, tmp_path):
    model, _ = load_checkpoint(str(SHIPPED))
    table = Detector.of_model(model, CONTRACT, 0.05, batch_size=4)(_rows(shapes)).select(predictions.SCHEMA.names)
    assert table.schema.field("masks").type == pa.list_(pa.string())
    assert table["masks"].null_count == table.num_rows


def _mask_table(shapes: dict, jitter: int, seed: int) -> pa.Table:
    """A predictions table whose masks are the ground truth's, each shifted by up to jitter px, with
    scores; plus a false positive per image, scored below them."""
    rng = np.random.default_rng(seed)
    coco = json.loads(Path(shapes["val_annotations"]).read_text())
    rows = []
    for image in coco["images"]:
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        masks = decode([a["segmentation"] for a in anns], image["width"], image["height"])
        shifted = [np.roll(m, tuple(rng.integers(-jitter, jitter + 1, 2)), axis=(0, 1)) for m in masks]
        false = np.zeros((1, image["height"], image["width"]), np.uint8)
        false[0, :10, :10] = 1
        all_masks = np.concatenate([np.stack(shifted) if shifted else false[:0], false])
        rows.append({"path": image["file_name"], "image_id": image["id"], "width": image["width"],
                     "height": image["height"], "boxes": [[0.0, 0.0, 10.0, 10.0]] * len(all_masks),
                     "scores": [*rng.uniform(0.1, 1, len(anns)).astype(np.float32).tolist(), 0.05],
                     "labels": [a["category_id"] for a in anns] + [coco["categories"][0]["id"]],
                     "error": None, "model": "test", "masks": encode(all_masks)})
    return pa.Table.from_pylist(rows, schema=predictions.SCHEMA)


def test_mask_ap_of_the_ground_truth_is_one_and_the_backends_agree(shapes, tmp_path):
    exact = tmp_path / "exact.parquet"
    pq.write_table(_mask_table(shapes, 0, 0), exact)
    perfect = score_files(str(exact), shapes["val_annotations"])["segm"]["metrics"]
    assert perfect["AP50"] == pytest.approx(1.0) and perfect["AR100"] == pytest.approx(1.0)
    shifted = tmp_path / "shifted.parquet"
    pq.write_table(_mask_table(shapes, 3, 1), shifted)
    reference = score_files(str(shifted), shapes["val_annotations"], "pycocotools")["segm"]
    assert 0 < reference["metrics"]["AP"] < 1
    for backend in ("hotcoco", "faster-coco-eval"):
        fast = score_files(str(shifted), shapes["val_annotations"], backend)["segm"]
        for name, value in reference["metrics"].items():
            assert fast["metrics"][name] == pytest.approx(value, abs=1e-9), (backend, name)
        for category_id, entry in reference["per_category"].items():
            assert fast["per_category"][category_id]["AP"] == pytest.approx(entry["AP"], abs=1e-9), backend


def test_boxes_and_masks_keep_and_count_by_one_rule_in_one_read(shapes, tmp_path, monkeypatch):
    """A detection left out (a category the annotations do not declare, a box that is not finite)
    is left out of the boxes and the masks alike and counted once; the table is read once."""
    import pipeline.evaluation.metrics as evaluation

    table = _mask_table(shapes, 0, 0).to_pylist()
    first = table[0]
    for box, label in (([0.0, 0.0, 5.0, 5.0], 999), ([float("nan"), 0.0, 5.0, 5.0], first["labels"][0])):
        first["boxes"].append(box)
        first["labels"].append(label)
        first["scores"].append(0.99)  # above the rest: kept by the cap, were it counted
        first["masks"].append(first["masks"][0])
    path = tmp_path / "odd.parquet"
    pq.write_table(pa.Table.from_pylist(table, schema=predictions.SCHEMA), path)
    reads = []
    read = evaluation.prediction_batches
    monkeypatch.setattr(evaluation, "prediction_batches", lambda *a, **k: reads.append(a) or read(*a, **k))
    result = score_files(str(path), shapes["val_annotations"])
    assert len(reads) == 1  # boxes and masks from one pass over the rows
    report = result["report"]
    assert report["unknown_category_detections"] == 1 and report["invalid_box_detections"] == 1
    assert result["segm"]["detections"] == report["detections"] == sum(len(r["scores"]) for r in table) - 2
    assert result["segm"]["metrics"]["AP50"] == pytest.approx(1.0)  # neither left-out mask was scored


def test_panoptic_annotations_without_panoptic_rows_give_no_pq_and_say_so(tmp_path):
    stuff = make_synthetic(str(tmp_path / "stuff"), train=0, val=2, seed=5,
                           config=SyntheticConfig(min_side=64, max_side=96, max_objects=2, stuff=True))
    path = tmp_path / "boxes.parquet"
    pq.write_table(_mask_table(stuff, 0, 0).drop_columns(["masks"]), path)
    result = score_files(str(path), stuff["val_annotations"], panoptic_annotations=stuff["val_panoptic"])
    assert "panoptic" not in result and "segm" not in result
    assert any("carry no panoptic segmentations" in w for w in result["report"]["warnings"])


def test_pictures_name_the_classes_of_the_annotations_when_the_model_names_none(shapes, tmp_path):
    from pipeline.detection.render import class_names

    path = tmp_path / "boxes.parquet"
    pq.write_table(_mask_table(shapes, 0, 0), path)  # a table whose model names no classes
    categories = json.loads(Path(shapes["val_annotations"]).read_text())["categories"]
    assert class_names(str(path), shapes["val_annotations"]) == {c["id"]: c["name"] for c in categories}
    assert class_names(str(path), shapes["val_images"]) is None  # a folder of images names nothing


def test_pictures_fill_the_masks(segm_model, shapes, tmp_path):
    from torchvision.io import decode_png

    from pipeline.detection.render import render_predictions

    table = Detector.of_model(segm_model, CONTRACT, 0.05, batch_size=4)(_rows(shapes)).select(predictions.SCHEMA.names)
    pq.write_table(table, tmp_path / "masks.parquet")
    pq.write_table(table.set_column(table.schema.get_field_index("masks"), "masks",
                                    pa.nulls(table.num_rows, pa.list_(pa.string()))), tmp_path / "boxes.parquet")
    drawn = {kind: render_predictions(str(tmp_path / f"{kind}.parquet"), 1, str(tmp_path / kind), min_score=0.0)
             for kind in ("masks", "boxes")}
    with_masks, boxes_only = (decode_png(torch.frombuffer(bytearray(Path(drawn[k][0]).read_bytes()), dtype=torch.uint8))
                              for k in ("masks", "boxes"))
    assert with_masks.shape == boxes_only.shape
    assert (with_masks != boxes_only).any(dim=0).float().mean() > 0.01  # the masks tint their pixels
