"""COCO AP of canvas-padded detection against per-image unpadded detection, same weights.

Padding an image onto its canvas changes the convolutions near its bottom/right border
(zero padding is not the image's own border), so detections move a little. This scores a
trained checkpoint both ways on a COCO-format set: each image alone at its resized size
with no padding (the reference's batch of one), and the detection job's path (the Detector
actor: decode, canvas, batches of --batch-size). Goal: |AP difference| <= 0.005.

    python -m bench.learning --minutes 12 --data DATA --save tiny.pt   # a trained detr-tiny
    python -m bench.canvas_ap --checkpoint tiny.pt --annotations DATA/annotations/val.json --images DATA/val
"""
from __future__ import annotations

import argparse
import json

import pyarrow as pa
import torch
import torchvision.transforms.v2.functional as TF

from model import PostProcess, load_checkpoint
from model import uri as uris
from pipeline import predictions
from pipeline.canvas import resized_size
from pipeline.coco import load_coco
from pipeline.detector import Detector
from pipeline.evaluation import CocoScorer, evaluate_predictions
from pipeline.fetch import fetch
from pipeline.images import decode_rgb


def unpadded(model, config, rows: pa.Table, sizes: dict) -> pa.Table:
    postprocess = PostProcess(0.0, top_k=config.num_queries)
    detections = []
    for path in rows["path"].to_pylist():
        image = torch.from_numpy(decode_rgb(uris.read_bytes(path))).permute(2, 0, 1)
        height, width = resized_size(image.shape[1], image.shape[2], **sizes)
        pixels = TF.resize(image, [height, width], antialias=True).float() / 255
        pixels = TF.normalize(pixels, config.image_mean, config.image_std)
        with torch.inference_mode():
            (found,) = postprocess(model(pixels), torch.tensor([image.shape[1:]]))
        detections.append({k: v.numpy() for k, v in found.items()})
    return predictions.detections_table(rows["path"].to_pylist(), rows["image_id"].to_pylist(),
                                        rows["width"].to_pylist(), rows["height"].to_pylist(), detections,
                                        [None] * rows.num_rows, "unpadded")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--annotations", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--min-size", type=int, default=160, help="bench.learning's validation size")
    parser.add_argument("--max-size", type=int, default=267)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    sizes = {"min_size": args.min_size, "max_size": args.max_size}
    dataset = load_coco(args.annotations, args.images)
    gt = CocoScorer(dataset.raw)
    rows = pa.table({"path": pa.array([dataset.image_uri(i) for i in dataset.images], pa.large_string()),
                     "image_id": pa.array([i["id"] for i in dataset.images], pa.int64()),
                     "shard": pa.array([0] * len(dataset.images), pa.int32())})
    rows = fetch(rows, **sizes, max_pixels=10**9)
    model, config = load_checkpoint(args.checkpoint)
    detector = Detector((config.to_dict(), model.state_dict()), "padded", 0.0, args.batch_size,
                        cpus=torch.get_num_threads(), **sizes)
    padded = detector(rows)
    calls = sum(padded["call_share"].to_pylist())
    results = {"images": rows.num_rows, **sizes, "batch_size": args.batch_size,
               "batch_fill": round(rows.num_rows / calls / args.batch_size, 3)}
    for name, table in (("unpadded", unpadded(model.eval(), config, rows, sizes)), ("padded", padded)):
        metrics = evaluate_predictions([table.select(predictions.SCHEMA.names)], gt)["metrics"]
        results[name] = {k: round(metrics[k], 4) for k in ("AP", "AP50", "AP75")}
    results["AP_difference"] = round(results["padded"]["AP"] - results["unpadded"]["AP"], 4)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
