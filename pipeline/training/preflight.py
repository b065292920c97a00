"""A training run's inputs checked before any GPU is rented: `jobs/train.py --dry-run`.

Reads the annotation files (without stopping at the first problem where it can go on),
counts images and boxes, checks that the image files are there (a sample, or all), and
resolves what the run would build and ask for: the model, the storage it would resume from,
and the resources. Nothing is trained and no Ray is started.
"""
from __future__ import annotations

import random
import time
from typing import Any

import numpy as np
import pyarrow.fs as pafs

import storage as uris
from model.checkpoint import read_checkpoint
from model.interface import build_model, preset_config, preset_contract

from ..coco import CocoDataset, CocoFormatError, load_coco, missing_image_files
from .config import TrainConfig
from .events import FOLDER
from .run import check_initialisation


def dry_run(cfg: TrainConfig, check_all_files: bool = False, sample: int = 100) -> dict[str, Any]:
    """The JSON summary; `ok` is False when the run could not start or would fail on its data.
    The paths are those the run would use (relative ones resolved as pipeline/options.py says)."""
    cfg = cfg.resolved()
    started = time.perf_counter()
    summary: dict[str, Any] = {"train": check_split(cfg.annotations, cfg.images, check_all_files, sample, cfg.seed)}
    if cfg.val_annotations:
        summary["val"] = check_split(cfg.val_annotations, cfg.val_images or "", check_all_files, sample, cfg.seed)
    try:
        check_initialisation(cfg)
        summary["initialisation"] = "ok"
    except (ValueError, OSError) as e:  # OSError: FileNotFoundError of --init, --backbone-weights
        summary["initialisation"] = str(e)
    num_classes = summary["train"].get("num_classes")
    try:
        summary["model"] = describe_model(cfg, num_classes) if num_classes else None
    except (ValueError, OSError):  # an --init that cannot be read: said under "initialisation"
        summary["model"] = None
    summary["storage"] = describe_storage(cfg)
    summary["resources"] = describe_resources(cfg)
    splits = [summary["train"]] + ([summary["val"]] if "val" in summary else [])
    summary["ok"] = (summary["initialisation"] == "ok" and all("fatal" not in s and not s["missing_files"]
                                                                 for s in splits))
    summary["seconds"] = round(time.perf_counter() - started, 1)
    return summary


def check_split(annotations: str, images: str, check_all_files: bool, sample: int, seed: int) -> dict[str, Any]:
    """Counts and problems of one split; a file that cannot be used is `fatal`."""
    try:
        dataset = load_coco(annotations, images, check_files=False)
    except (CocoFormatError, FileNotFoundError, OSError) as e:
        return {"annotations": annotations, "fatal": str(e), "problems": [str(e)]}
    anns = dataset.raw["annotations"]
    outside = boxes_outside(dataset)
    empty = len(dataset.images) - len(dataset.boxes)
    used = {a["category_id"] for a in anns}
    unused = sorted(c["id"] for c in dataset.categories if c["id"] not in used)
    checked, missing = check_files(dataset, check_all_files, sample, seed)
    split = {
        "annotations": annotations, "images": len(dataset.images), "boxes": len(anns),
        "training_boxes": sum(len(b) for b in dataset.boxes.values()), "crowd_boxes": dataset.crowd_boxes,
        "dropped_boxes": dataset.dropped_boxes, "clipped_boxes": outside, "empty_images": empty,
        "categories": len(dataset.categories), "num_classes": dataset.num_classes, "unused_categories": unused[:20],
        "files_checked": checked, "missing_files": len(missing), "missing_examples": missing[:5],
        "masks": {"usable": dataset.usable_masks, "without_segmentation": dataset.unsegmented,
                  "unusable": dict(dataset.mask_problems), "unusable_examples": dataset.mask_problem_records[:5]},
    }
    split["problems"] = [text for count, text in (
        (len(missing), f"{len(missing)} of {checked} image files checked are missing under {images}, e.g. {missing[:3]}"),
        (dataset.dropped_boxes, f"{dataset.dropped_boxes} boxes have no area inside their image (dropped)"),
        (outside, f"{outside} boxes reach outside their image (clipped to it)"),
        (empty, f"{empty} images have no box to train on (they still teach 'no object')"),
        (len(unused), f"{len(unused)} declared categories have no box, e.g. ids {unused[:5]}"),
        (sum(dataset.mask_problems.values()), f"{sum(dataset.mask_problems.values())} segmentations cannot be masks "
         f"(left out of --masks training), e.g. {dataset.mask_problem_records[:2]}"),
    ) if count]
    return split


def boxes_outside(dataset: CocoDataset) -> int:
    """Boxes with area inside their image that reach beyond it (training clips them)."""
    anns = [a for a in dataset.raw["annotations"] if not a.get("iscrowd", 0)]
    if not anns:
        return 0
    sizes = {img["id"]: (img["width"], img["height"]) for img in dataset.images}
    box = np.array([a["bbox"] for a in anns], dtype=np.float64)
    size = np.array([sizes[a["image_id"]] for a in anns], dtype=np.float64)
    x0, y0, x1, y1 = box[:, 0], box[:, 1], box[:, 0] + box[:, 2], box[:, 1] + box[:, 3]
    inside_area = (np.minimum(x1, size[:, 0]) > np.maximum(x0, 0)) & (np.minimum(y1, size[:, 1]) > np.maximum(y0, 0))
    reaches_out = (x0 < 0) | (y0 < 0) | (x1 > size[:, 0]) | (y1 > size[:, 1])
    return int((inside_area & reaches_out).sum())


def check_files(dataset: CocoDataset, check_all: bool, sample: int, seed: int) -> tuple[int, list[str]]:
    """(files checked, file_names missing): all of them with one listing of the image root,
    or a seeded sample with one batched metadata request."""
    if check_all:
        return len(dataset.images), missing_image_files(dataset)
    chosen = random.Random(seed).sample(dataset.images, min(sample, len(dataset.images)))
    fs, root = uris.resolve(dataset.image_root)
    infos = fs.get_file_info([f"{root.rstrip('/')}/{img['file_name']}" for img in chosen])
    return len(chosen), [img["file_name"] for img, info in zip(chosen, infos) if info.type != pafs.FileType.File]


def describe_model(cfg: TrainConfig, num_classes: int) -> dict[str, Any]:
    if cfg.init:
        config, _, contract = read_checkpoint(cfg.init)
        return {"init": cfg.init, "model_type": getattr(config, "model_type", "detr"), "num_classes": num_classes,
                "contract": cfg.contract(contract).to_dict(), "recipe": cfg.recipe()}
    model = build_model(preset_config(cfg.preset, num_classes, **cfg.model_overrides))
    parameters = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"preset": cfg.preset, "model_type": getattr(model.config, "model_type", "detr"),
            "num_classes": num_classes, "parameters": parameters,
            "contract": cfg.contract(preset_contract(cfg.preset)).to_dict(),
            "backbone_weights": cfg.backbone_weights, "checkpoint_bytes": 4 * (parameters + 2 * trainable),
            "recipe": cfg.recipe()}


def describe_storage(cfg: TrainConfig) -> dict[str, Any]:
    """Where the run would live, and whether it would resume."""
    run = uris.join(cfg.storage, cfg.name)
    try:
        fs, path = uris.resolve(run)
        infos = fs.get_file_info(pafs.FileSelector(path)) if fs.get_file_info(path).type == pafs.FileType.Directory else []
    except OSError as e:
        return {"run": run, "error": str(e)}
    checkpoints = [i.base_name for i in infos if i.base_name.startswith("checkpoint_")]
    return {"run": run, "resumes": bool(checkpoints), "checkpoints": len(checkpoints), "keep": cfg.keep,
            "tensorboard": uris.join(run, FOLDER), "curves": uris.join(run, "curves.png"), "mlflow": cfg.mlflow}


def describe_resources(cfg: TrainConfig) -> dict[str, Any]:
    per_worker = {"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.gpu else {})}
    total = {"CPU": cfg.workers * cfg.cpus_per_worker + cfg.data_cpus, **({"GPU": cfg.workers} if cfg.gpu else {})}
    return {"workers": cfg.workers, "per_worker": per_worker, "data_task_cpus": cfg.data_cpus,
            "at_least": total, "placement": cfg.placement, "total_batch": cfg.workers * cfg.batch_size}
