"""Bulk detection scaling on one machine: images/s with 2 CPU actors / with 1 (1 thread each).

Both measured in one run, steady state: each setting runs the whole job on N and on 3N
images and takes 2N / (t(3N) - t(N)), so actor start-up and the last partial batches
cancel out. Photos are 320x240, the model's input size, so decoding (a few ms an image)
leaves the cores to the actors. Ray declares 3 logical CPUs so that two 1-CPU actors still
leave room for the read tasks (on 2 cores a 2-CPU Ray would starve them).

    python -m bench.scaling [--images 480] [--batch-size 8]
"""
from __future__ import annotations

import argparse
import json
import tempfile

import torch

from bench.local_ray import ray_unless_connected
from model.checkpoint import save_checkpoint
from model.segmentation import build_detr
from pipeline.detection.config import DetectConfig
from pipeline.detection.run import run_detection

from .detection import steady_rate, write_photos


def seconds(images: str, output: str, checkpoint: str, actors: int, batch_size: int) -> float:
    summary = run_detection(DetectConfig(images=images, output=output, checkpoint=checkpoint, min_size=240,
                                         max_size=320, batch_size=batch_size, actors=(actors, actors),
                                         cpus_per_actor=1.0))
    assert summary["rows"] == summary["inputs"] and summary["duplicates"] == summary["missing_rows"] == 0
    return summary["seconds"]


def measure(args: argparse.Namespace, work: str) -> dict:
    """Every figure of the benchmark, its photos, model and outputs written under `work`."""
    torch.manual_seed(0)
    checkpoint = save_checkpoint(f"{work}/tiny.pt", build_detr("detr-tiny", num_classes=12))
    n = args.images
    for count in (n, 3 * n):
        write_photos(f"{work}/photos{count}", count, [(240, 320)], seed=count)
    results: dict = {"images": [n, 3 * n], "batch_size": args.batch_size, "threads_per_actor": 1}
    with ray_unless_connected(num_cpus=3):
        for actors in (1, 2):
            times = [seconds(f"{work}/photos{count}", f"{work}/out{actors}-{count}", checkpoint, actors,
                             args.batch_size) for count in (n, 3 * n)]
            results[f"actors_{actors}_images_per_s"] = steady_rate(n, *times)
    one, two = results["actors_1_images_per_s"], results["actors_2_images_per_s"]
    results["scaling_2_vs_1"] = one and two and round(two / one, 3)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=480, help="N of the N vs 3N runs")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as work:  # the photos, outputs and model: not kept
        print(json.dumps(measure(args, work)))


if __name__ == "__main__":
    main()
