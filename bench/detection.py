"""Bulk detection at scale, measured by its proxies on this machine (and on a GPU when present).

Images are JPEGs with the sizes of the 100 COCO val2014 photos in ../shared/reference/coco/
(45 shapes after resizing), scaled by --scale with the detection sizes (default 0.25: a
640x480 photo is 160x120, resized to 267x200 instead of 1067x800), drawn at random.

1. batch_fill (mean images per model call / --batch-size) of whole job runs, at batch 8 and 32.
2. Object-store bytes per image / file bytes per image: the Arrow bytes of the read tasks'
   output (what crosses Ray's object store to the actors), and what decoded pixels would be.
3. images/s of the whole job ÷ images/s of the bare model on the same canvases (decoded
   beforehand, same batches, same threads): steady state from job runs of N and 3N images,
   after a warm-up run (Ray's worker processes then have torch imported for both runs), so
   start-up cancels; one actor of --threads threads.
   Also the actor's own work on the same rows in-process (decode on its thread + model).
4. The driver's peak RSS with a manifest of 20,000 and of 200,000 paths that do not exist
   (each must become one `missing` row).

    python -m bench.detection [--images 512] [--threads 1] [--preset detr-tiny] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch
from PIL import Image

from bench.local_ray import ray_unless_connected
from model.checkpoint import save_checkpoint
from model.contract import InputContract
from model.segmentation import build_detr
from pipeline.detection.actor import DetectorActor, model_batches
from pipeline.detection.config import DetectConfig
from pipeline.detection.read import fetch
from pipeline.detection.run import run_detection

REFERENCE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "reference" / "coco" / "instances_val2014_100.json"
REPO = Path(__file__).resolve().parents[1]


def coco_sizes(scale: float) -> list[tuple[int, int]]:
    images = json.loads(REFERENCE.read_text())["images"]
    return [(max(1, round(i["height"] * scale)), max(1, round(i["width"] * scale))) for i in images]


def write_photos(folder: str, count: int, sizes: list[tuple[int, int]], seed: int = 0) -> None:
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        height, width = sizes[rng.integers(len(sizes))]
        coarse = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((width, height), Image.BILINEAR).save(f"{folder}/photo{i:05d}.jpg", quality=90)


def fetched(folder: str, sizes: dict) -> pa.Table:
    paths = sorted(str(p) for p in Path(folder).iterdir())
    rows = pa.table({"path": pa.array(paths, pa.large_string()), "image_id": pa.nulls(len(paths), pa.int64()),
                     "shard": pa.array([0] * len(paths), pa.int32())})
    return fetch(rows, InputContract(**sizes), max_pixels=10**9)


def bytes_per_image(table: pa.Table, sizes: dict) -> dict:
    files = sum(len(b) for b in table["data"].to_pylist())
    pixels = sum(3 * h * w for h, w in (InputContract(**sizes).resized_size(h, w) for h, w in
                                        zip(table["height"].to_pylist(), table["width"].to_pylist())))
    n = table.num_rows
    return {"file_bytes_per_image": round(files / n), "object_store_bytes_per_image": round(table.nbytes / n),
            "object_store_over_file_bytes": round(table.nbytes / files, 3),
            "decoded_pixels_over_file_bytes": round(pixels / files, 2)}


def bare_images_per_s(table: pa.Table, detector: DetectorActor, batch_size: int, window: int) -> float:
    """The model alone on the job's own canvas batches, decoded and padded beforehand."""
    prepared = []
    for start in range(0, table.num_rows, window):
        rows = table.slice(start, window)
        batches = model_batches(rows["canvas_height"].to_pylist(), rows["canvas_width"].to_pylist(),
                                rows["error"].to_pylist(), batch_size)
        for canvas, indices in batches:
            images, _ = detector.decode(rows, (canvas, indices))
            sizes = [(rows["height"][i].as_py(), rows["width"][i].as_py()) for i in indices]
            prepared.append(([images[i] for i in indices], canvas, sizes))
    for images, canvas, sizes in prepared:  # a warm-up pass: each (canvas, batch) shape's first call costs more
        detector.forward(images, canvas, sizes)
    if detector.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for images, canvas, sizes in prepared:
        detector.forward(images, canvas, sizes)
    if detector.device.type == "cuda":
        torch.cuda.synchronize()
    return table.num_rows / (time.perf_counter() - started)


def steady_rate(n: int, seconds_n: float, seconds_3n: float) -> float | None:
    """Images/s between a run of N and one of 3N: 2N / (t(3N) - t(N)), so that start-up and the
    last partial batches cancel out; None where N is too small for the difference to show."""
    return round(2 * n / (seconds_3n - seconds_n), 2) if seconds_3n > seconds_n else None


def job(images: str, output: str, checkpoint: str, sizes: dict, batch_size: int, threads: int, device: str) -> dict:
    summary = run_detection(DetectConfig(images=images, output=output, checkpoint=checkpoint, **sizes,
                                         batch_size=batch_size, actors=(1, 1), cpus_per_actor=threads,
                                         device=device, overwrite=True))
    assert summary["rows"] == summary["inputs"] and summary["duplicates"] == summary["missing_rows"] == 0, summary
    return summary


def driver_peak_rss(manifest: str, output: str, checkpoint: str) -> tuple[float, dict]:
    """Peak RSS (MiB) of the job's driver process alone: it joins this benchmark's Ray, whose
    processes are not the driver's."""
    env = dict(os.environ, RAY_AUTH_MODE=os.environ.get("RAY_AUTH_MODE", "disabled"),  # this Ray's mode
               RAY_ADDRESS=ray.get_runtime_context().gcs_address)
    proc = psutil.Popen([sys.executable, "jobs/detect.py", "--images", manifest, "--output", output,
                         "--checkpoint", checkpoint, "--min-size", "96", "--max-size", "160"],
                        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak = 0.0
    while proc.poll() is None:
        try:
            peak = max(peak, proc.memory_info().rss / 2**20)
        except psutil.Error:
            pass
        time.sleep(0.2)
    out = proc.stdout.read()
    if proc.returncode:
        raise RuntimeError(f"jobs/detect.py failed ({proc.returncode})")
    return peak, json.loads(out.strip().splitlines()[-1])


def measure(args: argparse.Namespace, work: str) -> dict:
    """Every figure of the benchmark, its photos, model and outputs written under `work`."""
    torch.manual_seed(0)
    classes = 12 if args.preset == "detr-tiny" else 91  # random weights: speed, not accuracy
    checkpoint = save_checkpoint(f"{work}/model.pt", build_detr(args.preset, num_classes=classes))
    sizes = {"min_size": round(800 * args.scale), "max_size": round(1333 * args.scale)}
    photo_sizes = coco_sizes(args.scale)
    n = args.images
    for count in (n, 3 * n):
        write_photos(f"{work}/photos{count}", count, photo_sizes, seed=count)
    results: dict = {"images": [n, 3 * n], **sizes, "threads": args.threads, "preset": args.preset,
                     "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu"}
    contract = InputContract(**sizes)
    resized = {contract.resized_size(h, w) for h, w in photo_sizes}
    results["shapes"], results["canvases"] = len(resized), len({contract.canvas_size(h, w) for h, w in resized})

    table = fetched(f"{work}/photos{n}", sizes)
    results.update(bytes_per_image(table, sizes))
    torch.set_num_threads(args.threads)
    saved = torch.load(checkpoint, weights_only=True)
    with ray_unless_connected(num_cpus=2 + args.threads,  # 1 actor + read/write tasks
                              num_gpus=1 if args.device == "cuda" else 0):
        detector = DetectorActor((saved["config"], saved["model"]), "bench", 0.5, 8, contract.to_dict(),
                                 cpus=args.threads)
        results["bare_images_per_s"] = round(bare_images_per_s(table, detector, 8, 256), 2)
        started = time.perf_counter()  # the actor's own work on the same rows: decode thread + model
        for start in range(0, table.num_rows, 256):
            detector(table.slice(start, 256))
        results["actor_images_per_s"] = round(table.num_rows / (time.perf_counter() - started), 2)
        results["actor_over_bare"] = round(results["actor_images_per_s"] / results["bare_images_per_s"], 3)
        del detector

        job(f"{work}/photos{n}", f"{work}/warm-up", checkpoint, sizes, 8, args.threads, args.device)
        times = []
        for count in (n, 3 * n):
            summary = job(f"{work}/photos{count}", f"{work}/out{count}", checkpoint, sizes, 8, args.threads, args.device)
            times.append(summary["seconds"])
            results[f"batch_fill_8_{count}"] = summary["batch_fill"]
        steady = results["pipeline_images_per_s"] = steady_rate(n, *times)
        results["pipeline_over_bare"] = steady and round(steady / results["bare_images_per_s"], 3)
        summary = job(f"{work}/photos{3 * n}", f"{work}/out32", checkpoint, sizes, 32, args.threads, args.device)
        results[f"batch_fill_32_{3 * n}"] = summary["batch_fill"]

        for count in (args.memory_paths, 10 * args.memory_paths) if args.memory_paths else ():
            manifest = f"{work}/missing{count}.parquet"
            pq.write_table(pa.table({"path": [f"{work}/nowhere/{i:09d}.jpg" for i in range(count)]}), manifest)
            peak, summary = driver_peak_rss(manifest, f"{work}/missing-out{count}", checkpoint)
            assert summary["rows"] == summary["inputs"] == count and summary["errors"] == {"missing": count}, summary
            results[f"driver_peak_rss_mib_{count}"] = round(peak)
            results[f"seconds_{count}_missing"] = summary["seconds"]
    m = args.memory_paths
    if m:
        results["driver_rss_ratio_10x"] = round(results[f"driver_peak_rss_mib_{10 * m}"]
                                                / results[f"driver_peak_rss_mib_{m}"], 3)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512, help="N of the N vs 3N runs")
    parser.add_argument("--scale", type=float, default=0.25, help="of the COCO photo sizes and of 800/1333")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the one actor (CPU)")
    parser.add_argument("--preset", default="detr-tiny")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--memory-paths", type=int, default=20_000,
                        help="N of the N vs 10N driver-memory runs (0: skip them)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-detect-") as work:  # the photos, outputs and model: not kept
        print(json.dumps(measure(args, work)))


if __name__ == "__main__":
    main()
