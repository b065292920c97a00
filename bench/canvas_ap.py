"""COCO AP of one checkpoint through three ways of padding the same images, same weights.

- `batch`: batches of --batch-size in file order, each zero-padded to its largest image (how
  the training job validated before validation ran the detection path, and how the reference
  DETR evaluates): an image's detections then depend on its neighbours;
- `alone`: each image alone at its resized size, no padding (the reference's batch of one);
- `detection`: the detection path (pipeline/detection/actor.py: the read stage, the one decoder,
  canvases, batches of --batch-size), which training's validation now runs too.

Each image is resized by the checkpoint's input contract (or --min-size / --max-size), and the
detections are scored by the scorer jobs/evaluate.py uses, keeping every query (threshold 0).
By default on the demo's 50 validation images (make_synthetic seed 0, 96-192 px).

    python -m bench.canvas_ap --checkpoints checkpoints/detr-tiny-shapes.pt [more.pt ...] [--images 50]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile

import torch
import torchvision.transforms.v2.functional as TF

import storage as uris
from model.checkpoint import load_checkpoint
from model.contract import resolve_contract
from model.detr import pad_images
from model.postprocess import PostProcess
from pipeline import predictions
from pipeline.coco import load_coco
from pipeline.evaluation.metrics import evaluate
from pipeline.evaluation.scoring import CocoScorer
from pipeline.images import decode_image
from pipeline.synthetic import SyntheticConfig, make_synthetic
from pipeline.training.validation import detect_images


@torch.inference_mode()
def padded_batches(model, contract, records: list[dict], batch_size: int):
    """Detections of batches each padded to its largest image (batch_size 1: alone)."""
    postprocess = PostProcess(0.0, top_k=model.config.num_queries)
    paths, ids, widths, heights, found = [], [], [], [], []
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        images = [decode_image(uris.read_bytes(r["path"])) for r in chunk]
        pixels = [TF.normalize(TF.resize(image, list(contract.resized_size(*image.shape[1:])), antialias=True)
                               .float() / 255, contract.image_mean, contract.image_std) for image in images]
        batch, mask = pad_images(pixels)
        sizes = torch.tensor([list(image.shape[1:]) for image in images])
        for r, image, d in zip(chunk, images, postprocess(model(batch, mask), sizes)):
            paths.append(r["path"])
            ids.append(r["image_id"])
            heights.append(image.shape[1])
            widths.append(image.shape[2])
            found.append({k: v.numpy() for k, v in d.items()})
    return predictions.detections_table(paths, ids, widths, heights, found, [None] * len(paths), "bench")


def score(table, gt: CocoScorer) -> dict[str, float]:
    metrics = evaluate([table], gt)["metrics"]
    return {k: round(metrics[k], 4) for k in ("AP", "AP50", "AP75")}


def measure(checkpoint: str, records: list[dict], gt: CocoScorer, batch_size: int, sizes: dict) -> dict:
    model, _ = load_checkpoint(checkpoint)
    contract, _ = resolve_contract(model.contract, checkpoint, **sizes)
    return {"checkpoint": checkpoint, "contract_recorded": model.contract is not None,
            "min_size": contract.min_size, "max_size": contract.max_size,
            "masked_backbone": model.config.masked_backbone,
            "batch": score(padded_batches(model, contract, records, batch_size), gt),
            "alone": score(padded_batches(model, contract, records, 1), gt),
            "detection": score(detect_images(model, records, contract, batch_size, score_threshold=0.0), gt)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", nargs="+", required=True)
    parser.add_argument("--data", help="a make_synthetic folder (default: the demo's validation images, made here)")
    parser.add_argument("--images", type=int, default=50, help="the first N validation images")
    parser.add_argument("--min-size", type=int, help="instead of the checkpoint's contract")
    parser.add_argument("--max-size", type=int)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        data = args.data or make_synthetic(os.path.join(folder, "shapes"), 0, args.images, seed=0,
                                           config=SyntheticConfig(min_side=96, max_side=192, max_objects=4))["out"]
        dataset = load_coco(f"{data}/annotations/val.json", f"{data}/val")
        records = dataset.records()[:args.images]
        keep = {r["image_id"] for r in records}
        gt = CocoScorer({**dataset.raw, "images": [i for i in dataset.raw["images"] if i["id"] in keep],
                         "annotations": [a for a in dataset.raw["annotations"] if a["image_id"] in keep]})
        sizes = {"min_size": args.min_size, "max_size": args.max_size}
        for checkpoint in args.checkpoints:
            print(json.dumps({"images": len(records), "batch_size": args.batch_size,
                              **measure(checkpoint, records, gt, args.batch_size, sizes)}), flush=True)


if __name__ == "__main__":
    main()
