"""The cost of masks in bulk detection: the shipped detr-tiny with and without its mask head (the
same box weights: checkpoints/detr-tiny-shapes-masks.pt is detr-tiny-shapes.pt plus the head).

For each image set, the model actor's whole work on the same rows in-process (decode, canvases,
model, boxes, and with the head each kept box's mask at the image's full size as RLE), after a
warm-up pass: images/s with masks / without, and the Parquet bytes per row of the table each
writes (masks as RLE text). Image sets: the synthetic shapes (96-192 px, what the model was
trained on) and photo-sized JPEGs at COCO's sizes (masks made at 640x480 and so on, though the
model sees them at its 160 / 267).

    python -m bench.masks [--images 64] [--threads 1]
"""
from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from bench.detection import coco_sizes, fetched, write_photos
from model.checkpoint import read_checkpoint
from pipeline import predictions
from pipeline.detection.actor import DetectorActor
from pipeline.synthetic import SyntheticConfig, make_synthetic

REPO = Path(__file__).resolve().parents[1]
CHECKPOINTS = {"boxes": REPO / "checkpoints" / "detr-tiny-shapes.pt",
               "masks": REPO / "checkpoints" / "detr-tiny-shapes-masks.pt"}


def measure(rows: pa.Table, checkpoint: Path, threads: int) -> dict:
    config, state, contract = read_checkpoint(str(checkpoint))
    actor = DetectorActor((config.to_dict(), state), "bench", 0.05, 8, contract.to_dict(), cpus=threads)
    actor(rows)  # warm-up: each canvas shape's first call costs more
    started = time.perf_counter()
    table = actor(rows).select(predictions.SCHEMA.names)
    seconds = time.perf_counter() - started
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return {"images_per_s": round(rows.num_rows / seconds, 2),
            "parquet_bytes_per_row": round(len(buffer.getvalue()) / rows.num_rows),
            "detections_per_image": round(sum(len(s) for s in table["scores"].to_pylist()) / rows.num_rows, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64, help="images of each set")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    _, _, contract = read_checkpoint(str(CHECKPOINTS["boxes"]))
    sizes = {"min_size": contract.min_size, "max_size": contract.max_size}
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        shapes = make_synthetic(f"{folder}/shapes", train=0, val=args.images, seed=0,
                                config=SyntheticConfig(min_side=96, max_side=192, max_objects=4))
        write_photos(f"{folder}/photos", args.images, coco_sizes(1.0))
        for name, images in (("shapes", shapes["val_images"]), ("coco_sized_photos", f"{folder}/photos")):
            rows = fetched(images, sizes)
            measured = {kind: measure(rows, path, args.threads) for kind, path in CHECKPOINTS.items()}
            measured["images_per_s_ratio"] = round(
                measured["masks"]["images_per_s"] / measured["boxes"]["images_per_s"], 3)
            measured["bytes_per_row_ratio"] = round(
                measured["masks"]["parquet_bytes_per_row"] / measured["boxes"]["parquet_bytes_per_row"], 2)
            results[name] = measured
    print(json.dumps({"images": args.images, "threads": args.threads, **results}))


if __name__ == "__main__":
    main()
