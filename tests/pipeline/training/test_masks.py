"""Training the mask head: segmentations read and checked, the synthetic set's exact masks,
masks augmented with their boxes, a joint training step, and the paper's second stage (the mask
head alone on a frozen box model) through Ray Train."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model.checkpoint import load_checkpoint
from model.criterion import build_criterion
from model.segmentation import build_detr
from pipeline.coco import load_coco
from pipeline.masks import decode
from pipeline.panoptic import read_png
from pipeline.synthetic import STUFF, SyntheticConfig, make_synthetic
from pipeline.training.augment import AugmentConfig, train_transform, transform_sample
from pipeline.training.config import TrainConfig
from pipeline.training.loop import build_model
from pipeline.training.run import run_training
from pipeline.training.step import param_groups, train_step
from pipeline.training.stream import augment_samples, collate, records_of
from tests import SHIPPED
from tests.pipeline.training import small_run, tensorboard_scalars


def _mask_box(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_the_synthetic_sets_masks_are_each_shapes_visible_pixels(tmp_path):
    shapes = make_synthetic(str(tmp_path), train=6, val=0, seed=4,
                            config=SyntheticConfig(min_side=64, max_side=96, max_objects=4, min_object=14))
    coco = json.loads(Path(shapes["train_annotations"]).read_text())
    sizes = {i["id"]: (i["width"], i["height"]) for i in coco["images"]}
    checked = 0
    for image_id, (width, height) in sizes.items():
        anns = [a for a in coco["annotations"] if a["image_id"] == image_id]
        masks = decode([a["segmentation"] for a in anns], width, height)
        assert masks.sum(0).max(initial=0) <= 1  # visible parts: no pixel belongs to two shapes
        for ann, mask in zip(anns, masks):
            assert ann["area"] == mask.sum()
            if mask.any():  # inside the shape's whole extent
                x0, y0, x1, y1 = _mask_box(mask)
                bx, by, bw, bh = ann["bbox"]
                assert bx <= x0 and by <= y0 and x1 <= bx + bw and y1 <= by + bh
                checked += 1
    assert checked >= 6


def test_the_stuff_set_labels_every_pixel_once_and_its_panoptic_pngs_agree(tmp_path):
    """With stuff, the shapes, the sky and the ground cover each pixel exactly once, each image's
    panoptic PNG paints each segment's mask with its id, and training records the stuff classes."""
    shapes = make_synthetic(str(tmp_path), train=0, val=4, seed=6,
                            config=SyntheticConfig(min_side=64, max_side=96, max_objects=3, stuff=True))
    dataset = load_coco(shapes["val_annotations"], shapes["val_images"])
    assert dataset.stuff_classes == tuple(STUFF.values())
    panoptic = json.loads(Path(shapes["val_panoptic"]).read_text())
    for image, entry in zip(dataset.images, panoptic["annotations"]):
        anns = [a for a in dataset.raw["annotations"] if a["image_id"] == image["id"]]
        masks = decode([a["segmentation"] for a in anns], image["width"], image["height"])
        assert (masks.sum(0) == 1).all()
        ids = read_png((Path(shapes["val_panoptic"]).with_suffix("") / entry["file_name"]).read_bytes())
        assert [s["id"] for s in entry["segments_info"]] == [k + 1 for k, m in enumerate(masks) if m.any()]
        for segment in entry["segments_info"]:
            assert np.array_equal(ids == segment["id"], masks[segment["id"] - 1].astype(bool))
    model = build_model(TrainConfig("", "", "", "", preset="detr-tiny", masks=True), dataset.num_classes,
                        dataset.stuff_classes)
    assert model.config.stuff_classes == (20, 21) and model.config.masks
    fine_tuned = build_model(TrainConfig("", "", "", "", init=str(SHIPPED), masks=True), dataset.num_classes,
                             dataset.stuff_classes)  # the shipped 12-class box model, given 22 classes
    assert fine_tuned.config.stuff_classes == (20, 21) and fine_tuned.config.num_classes == 22


def test_unusable_segmentations_are_counted_named_and_left_out_of_mask_training(tmp_path):
    image = {"id": 1, "file_name": "a.jpg", "width": 40, "height": 30}
    square = [[5, 5, 15, 5, 15, 15, 5, 15]]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10], "segmentation": square},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10], "segmentation": [[5, 5, 15, 5]]},
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10],
         "segmentation": {"size": [40, 30], "counts": "abc"}},
        {"id": 4, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10], "segmentation": [[5, 5, 95, 5, 15, 15]]},
        {"id": 5, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10]},
    ]
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"images": [image], "annotations": anns, "categories": [{"id": 1, "name": "x"}]}))
    dataset = load_coco(str(path), str(tmp_path), check_files=False)
    assert dict(dataset.mask_problems) == {"polygon_points": 1, "rle_size": 1, "outside_image": 1}
    assert dataset.unsegmented == 1 and dataset.usable_masks == 1
    assert dataset.mask_problem_records[0].endswith("annotations[1] (id 2): polygon of 2 points (at least 3)")
    assert "annotations[2] (id 3): RLE of size [40, 30] for an image of [30, 40]" in dataset.mask_problem_records[1]
    [boxes_only] = records_of(dataset)
    [with_masks] = records_of(dataset, masks=True)
    assert len(boxes_only["labels"]) == 5 and len(with_masks["labels"]) == 1  # every image kept
    assert json.loads(with_masks["segmentations"][0]) == square


def test_augmentation_moves_each_mask_with_its_box():
    """A mask that fills its box stays the box's pixels through flips, multi-scale resizes and
    crops (boxes a crop empties leave with their masks)."""
    image = torch.zeros(3, 90, 120, dtype=torch.uint8)
    boxes = np.array([[10, 20, 50, 60], [70, 5, 110, 85]], np.float32)
    masks = np.zeros((2, 90, 120), np.uint8)
    for mask, (x0, y0, x1, y1) in zip(masks, boxes.astype(int)):
        mask[y0:y1, x0:x1] = 1
    transform = train_transform(AugmentConfig(scales=(60, 80, 100), max_size=160, crop_resize=(70, 90),
                                              crop_size=(40, 80)))
    for seed in range(12):
        torch.manual_seed(seed)
        out, cxcywh, labels, moved = transform_sample(image, boxes, np.array([1, 2]), transform, masks)
        height, width = out.shape[-2:]
        assert moved.shape == (len(labels), height, width)
        for (cx, cy, w, h), mask in zip(cxcywh, moved):
            expected = [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
            # a nearest resize moves a mask's edge by up to a source pixel; the crop path resizes twice
            # (a wrong flip or crop would move it by tens of pixels)
            assert np.abs(np.array(_mask_box(mask)) - np.array(expected)).max() <= 3.0


def test_a_joint_training_step_trains_boxes_and_masks():
    """Masks reach collate bit-packed, at each image's size; one step moves the box model and the
    mask head alike."""
    torch.manual_seed(0)
    masks = np.zeros((1, 48, 64), np.uint8)
    masks[0, 8:30, 10:40] = 1
    batch = augment_samples([(torch.randint(0, 255, (3, 48, 64), dtype=torch.uint8),
                              np.array([[10, 8, 40, 30]], np.float32), np.array([3]), 1, masks)],
                            train_transform(AugmentConfig(scales=(48,), max_size=64, hflip=0.0)))
    images, mask, targets = collate(batch, torch.device("cpu"), (0.5,) * 3, (0.25,) * 3)
    assert targets[0]["masks"].shape == (1, *images.shape[-2:]) and targets[0]["masks"].sum() == masks.sum()
    model = build_detr("detr-tiny", num_classes=5, masks=True).train()
    cfg = TrainConfig("", "", "", "", masks=True)
    criterion = build_criterion(5, model.config.dec_layers, two_stage=True, masks=True)
    optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=1e-3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss, losses, _ = train_step(model, criterion, optimizer, (images, mask, targets), cfg, steps=1000)
    assert torch.isfinite(loss) and losses["loss_mask"] > 0 and losses["loss_dice"] > 0
    after = model.state_dict()
    assert not torch.equal(before["mask_head.out_lay.weight"], after["mask_head.out_lay.weight"])
    assert not torch.equal(before["detr.class_embed.weight"], after["detr.class_embed.weight"])


def test_the_mask_head_alone_on_the_shipped_box_model(ray_cluster, tmp_path):
    """The paper's second stage through Ray Train: a new mask head on the shipped detr-tiny, whose
    own weights (and batch norm statistics) stay as they were; validation scores boxes and masks."""
    shapes = make_synthetic(str(tmp_path / "shapes"), train=8, val=4, seed=5,
                            config=SyntheticConfig(min_side=64, max_side=128, max_objects=3, min_object=12,
                                                   max_object=40))
    summary = run_training(small_run(shapes, tmp_path, "masks", init=str(SHIPPED), masks=True, freeze_detr=True,
                                     model_overrides={}, batch_size=4, val_annotations=shapes["val_annotations"],
                                     val_images=shapes["val_images"]))
    assert summary["metrics"]["loss_mask"] > 0 and summary["metrics"]["loss_dice"] > 0
    assert summary["metrics"]["AP"] > 0.3  # the shipped box model's, unchanged
    assert 0 <= summary["metrics"]["segm_AP"] <= 1 and "segm_AR100" in summary["metrics"]
    trained, config = load_checkpoint(summary["checkpoint"])
    shipped, _ = load_checkpoint(str(SHIPPED))
    assert config.masks
    for name, value in shipped.state_dict().items():
        assert torch.equal(trained.state_dict()[f"detr.{name}"], value), name
    scalars = tensorboard_scalars(summary["run"])
    assert [s for s, _ in scalars["train/loss_mask"]] == [1, 2]
    assert scalars["val/segm_AP"] == [(2, pytest.approx(summary["metrics"]["segm_AP"]))]
