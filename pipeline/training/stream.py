"""Training data: COCO records -> read + decode + augment (Ray Data CPU tasks) -> batches.

The driver holds only the annotation records (small: paths and boxes). Each epoch every
worker takes its share of a fresh permutation of them and streams it: image bytes are read,
decoded and augmented in Ray Data tasks as the worker consumes them, so a dataset larger
than a node's memory or disk trains. Images travel as uint8; the worker normalises and pads
them. Images are decoded by the one decoder of training, validation and detection
(pipeline/images.py); validation runs the detection path itself (training/validation.py).
With masks, each object's segmentation travels as JSON text, is rasterised in the task at the
image's size and augmented with its box, and reaches the worker bit-packed (an eighth of the bytes).
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import ray
import torch
import torchvision.transforms.v2.functional as F

import storage as uris
from model.contract import InputContract
from model.detr import pad_images

from ..coco import CocoDataset
from ..images import decode_image
from ..masks import decode
from .augment import AugmentConfig, train_transform, transform_sample


def records_of(dataset: CocoDataset, masks: bool = False) -> list[dict[str, Any]]:
    """Arrow-friendly rows: boxes flattened (x0, y0, x1, y1, ...) so empty images type-check;
    with masks, the objects' segmentations as JSON text (those without a usable one left out)."""
    rows = []
    for r in dataset.records(masks):
        row = {"path": r["path"], "image_id": r["image_id"], "boxes": [float(v) for box in r["boxes"] for v in box],
               "labels": [int(v) for v in r["labels"]]}
        if masks:
            row["segmentations"] = r["segmentations"]
        rows.append(row)
    return rows


def augment_samples(samples: Iterable[tuple[torch.Tensor, np.ndarray, np.ndarray, int, np.ndarray | None]],
                    transform) -> dict[str, list]:
    """(decoded uint8 image, xyxy boxes, labels, image id, masks [n,H,W] or None) -> a batch of
    transformed samples with normalised cxcywh boxes (flattened), each image's original (height,
    width) and, with masks, the transformed masks bit-packed (unpacked by collate)."""
    out: dict[str, list] = {"image": [], "boxes": [], "labels": [], "image_id": [], "orig_size": []}
    for image, boxes, labels, image_id, masks in samples:
        out["orig_size"].append(np.array(image.shape[-2:], dtype=np.int64))
        image, boxes, labels, masks = transform_sample(image, boxes, labels, transform, masks)
        out["image"].append(image.numpy())
        out["boxes"].append(boxes.reshape(-1).astype(np.float32))
        out["labels"].append(labels.astype(np.int64))
        out["image_id"].append(int(image_id))
        if masks is not None:
            out.setdefault("masks", []).append(np.packbits(masks.astype(bool), axis=None))
    return out


def read_image(path: str) -> torch.Tensor:
    try:
        return decode_image(uris.read_bytes(path))
    except (OSError, ValueError) as e:  # a training set must be readable: fail naming the file
        raise ValueError(f"cannot read training image {path}: {e}") from e


def load_and_augment(batch: dict[str, np.ndarray], augment: AugmentConfig) -> dict[str, list]:
    transform = train_transform(augment)
    segmentations = batch.get("segmentations")

    def sample(i: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray, int, np.ndarray | None]:
        image = read_image(str(batch["path"][i]))
        masks = None
        if segmentations is not None:  # rasterised at the decoded image's size
            masks = decode([json.loads(s) for s in segmentations[i]], image.shape[-1], image.shape[-2])
        return (image, np.asarray(batch["boxes"][i], np.float32).reshape(-1, 4),
                np.asarray(batch["labels"][i], np.int64), batch["image_id"][i], masks)

    return augment_samples((sample(i) for i in range(len(batch["path"]))), transform)


def epoch_order(count: int, seed: int, epoch: int) -> np.ndarray:
    """The epoch's permutation of all training records: drawn from (seed, epoch), so every
    worker and every restart sees the same one, and each epoch a new one, as the reference's
    sampler reshuffles the whole set."""
    return np.random.default_rng([seed, epoch]).permutation(count)


def worker_share(order: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Rank's records of an epoch: every world_size-th of the order from rank, no overlap, and
    the same count on every rank (data-parallel steps must match); the last count % world_size
    of the order sit this epoch out, other records each epoch."""
    return order[rank::world_size][: len(order) // world_size]


def sample_stream(records: list[dict[str, Any]], augment: AugmentConfig, num_cpus: float = 0.5,
                  records_per_block: int = 32) -> ray.data.Dataset:
    """A Ray Dataset of the records' augmented samples.

    Records go in blocks of records_per_block, one Ray task per block: a task per image
    would cost more in scheduling than in decoding. The order is the records' when the
    consumer's DataContext preserves order (training sets it)."""
    ds = ray.data.from_items(records, override_num_blocks=max(1, math.ceil(len(records) / records_per_block)))
    return ds.map_batches(
        load_and_augment,  # type: ignore[arg-type]  # Ray's type of fn leaves out its fn_kwargs
        fn_kwargs={"augment": augment},
        batch_size=None,  # a whole block per call
        num_cpus=num_cpus,
    )


def collate(
    batch: dict[str, Any], device: torch.device, mean: tuple[float, ...], std: tuple[float, ...],
    contract: InputContract | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Normalise and zero-pad a numpy batch: images [B,3,H,W], mask [B,H,W], targets (with
    "masks" [n,H,W] at each augmented image's size when the batch has masks). With a fixed-size
    contract each augmented image is resized to it as detection resizes (the boxes are relative;
    the masks stay at the image's size, which RF-DETR's mask terms sample at relative points)."""
    pixels = [torch.from_numpy(np.array(img)).to(device) for img in batch["image"]]
    if contract is not None and contract.fixed_size is not None:
        images = [F.normalize(contract.resize(p, contract.fixed_size), mean, std) for p in pixels]
    else:
        images = [F.normalize(F.to_dtype(p, torch.float32, scale=True), mean, std) for p in pixels]
    targets = [
        {
            # copies: Ray's batches are read-only, and torch warns on wrapping a read-only array
            "boxes": torch.as_tensor(np.array(boxes, dtype=np.float32).reshape(-1, 4), device=device),
            "labels": torch.as_tensor(np.array(labels, dtype=np.int64), device=device),
        }
        for boxes, labels in zip(batch["boxes"], batch["labels"])
    ]
    if "masks" in batch:  # at the augmented image's size, before any fixed-size resize
        for target, packed, image in zip(targets, batch["masks"], pixels):
            shape = (len(target["labels"]), *image.shape[-2:])
            bits = np.unpackbits(np.asarray(packed, np.uint8), count=int(np.prod(shape)))
            target["masks"] = torch.from_numpy(bits.reshape(shape)).to(device)
    batch_images, mask = pad_images(images)
    return batch_images, mask, targets
