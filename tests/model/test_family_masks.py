"""RF-DETR's instance segmentation (transformers' RfDetrForInstanceSegmentation) behind the model
interface: its masks equal transformers' own post-processing, a box folder gains a new mask head
for --masks training, its loss takes the annotations' masks, and what it cannot do is refused in
one line."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.io import decode_image

from model.checkpoint import check_source, load_checkpoint
from model.family_export import check_exportable
from model.safe_load import CheckpointError
from pipeline.masks import decode
from pipeline.training.stream import collate
from pipeline.training.validation import detect_images
from tests.families import assert_same_detections, family_folder, processor
from tests.model.test_families import images  # noqa: F401 (the fixture)


def test_masks_equal_transformers(images, tmp_path):  # noqa: F811
    """Each detection's mask is transformers' binary map of its query (post_process_instance_segmentation
    with return_binary_maps, at the image's size), next to boxes equal to post_process_object_detection's."""
    reference = family_folder("rf_detr", tmp_path, masks=True)
    model, config = load_checkpoint(str(tmp_path))
    assert config.masks and config.model_class == "RfDetrForInstanceSegmentation"
    table = detect_images(model, [{"path": p, "image_id": i} for i, p in enumerate(images)], model.contract,
                          batch_size=2, score_threshold=0.05)
    image_processor = processor("rf_detr")
    compared = 0
    for i, path in enumerate(images):
        pixels = decode_image(path)
        size = tuple(pixels.shape[1:])
        with torch.no_grad():
            outputs = reference(**image_processor(images=pixels, return_tensors="pt"))
        boxes = image_processor.post_process_object_detection(outputs, threshold=0.05, target_sizes=[size],
                                                               top_k=config.top_k)[0]
        row = table.slice(i, 1).to_pylist()[0]
        assert_same_detections(row, {k: v.tolist() for k, v in boxes.items()})
        segmented = image_processor.post_process_instance_segmentation(
            outputs, threshold=0.05, target_sizes=[size], return_binary_maps=True, top_k=config.top_k)[0]
        ours = decode([{"size": list(size), "counts": m} for m in row["masks"]], size[1], size[0])
        assert len(ours) == len(row["scores"])
        # transformers leaves out the empty masks; each of its masks is one of ours, of its score and label
        for mask, info in zip(segmented["segmentation"].numpy(), segmented["segments_info"]):
            match = [k for k, (s, label) in enumerate(zip(row["scores"], row["labels"]))
                     if label == info["label_id"] and abs(s - info["score"]) <= 1e-4
                     and (ours[k] != mask).mean() <= 1e-3]  # logits within rounding of 0 may flip
            assert match, f"image {i}: no mask of ours matches transformers' segment {info}"
            compared += 1
    assert compared > 0


def test_a_box_folder_gains_a_new_mask_head(tmp_path):
    family_folder("rf_detr", tmp_path)
    boxes, _ = load_checkpoint(str(tmp_path))
    segmenting, config = load_checkpoint(str(tmp_path), masks=True)
    assert config.masks
    pixels = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        a, b = boxes(pixels), segmenting(pixels)
    assert torch.equal(a["pred_logits"], b["pred_logits"]) and torch.equal(a["pred_boxes"], b["pred_boxes"])
    assert b["pred_masks"].shape[:2] == a["pred_logits"].shape[:2]


def test_the_loss_takes_the_annotations_masks(tmp_path):
    """A training batch (collate: the fixed-size resize, the masks at each augmented image's size)
    gives the mask terms, finite, and gradients to the mask head."""
    family_folder("rf_detr", tmp_path, masks=True)
    model, _ = load_checkpoint(str(tmp_path))
    model.train()
    rng = np.random.default_rng(0)
    masks = np.zeros((2, 90, 120), bool)
    masks[0, 10:40, 20:70], masks[1, 50:85, 60:110] = True, True
    batch = {"image": [rng.integers(0, 255, (3, 90, 120), np.uint8)], "boxes": [[[0.375, 0.278, 0.417, 0.333],
                                                                              [0.708, 0.75, 0.417, 0.389]]],
             "labels": [[1, 2]], "masks": [np.packbits(masks, axis=None)]}
    pixels, mask, targets = collate(batch, torch.device("cpu"), (0.0,) * 3, (1.0,) * 3, model.contract)
    assert pixels.shape[-2:] == (128, 128) and targets[0]["masks"].shape == (2, 90, 120)
    losses = model(pixels, mask, targets)
    assert torch.isfinite(losses["loss"]) and losses["loss_mask_dice"] > 0
    losses["loss"].backward()
    assert model.model.query_features_proj.weight.grad.abs().sum() > 0


def test_masks_training_and_export_are_refused_where_they_cannot_run(tmp_path):
    family_folder("rf_detr", tmp_path / "segm", masks=True)
    family_folder("rt_detr_v2", tmp_path / "rtdetr")
    with pytest.raises(CheckpointError, match="train it with --masks"):
        check_source(str(tmp_path / "segm"), masks=False)
    with pytest.raises(CheckpointError, match="has no mask head"):
        check_source(str(tmp_path / "rtdetr"), masks=True)
    check_source(str(tmp_path / "segm"), masks=True)
    model, config = load_checkpoint(str(tmp_path / "segm"))
    with pytest.raises(Exception, match="instance segmentation model is not supported"):
        check_exportable(config, model.contract)
