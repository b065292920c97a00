"""Bulk detection efficiency and memory.

1. images/s of the whole pipeline (list -> read -> decode -> resize -> model actor ->
   Parquet), from local disk and from a local S3 server, / images/s of the bare model
   loop (the same Detector on pre-decoded, pre-resized images), same model, batch and
   threads (1 actor of 1 thread; decoding gets the other core), one run.
   The in-process runs include Ray Data's start (actor creation, ~5 s), which a short
   run cannot amortise; the steady-state ratio comes from two job runs of N and 10N.
2. Peak memory (PSS, all processes of the job incl. its Ray) at N and 10N images: it streams.

    python -m bench.detection [--images 240] [--batch-size 8]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import numpy as np
import psutil
import ray
import torch
from PIL import Image

from model import build_detr, save_checkpoint
from model import uri as uris
from pipeline.detection import DetectConfig, Detector, list_inputs, load_images, run_detection

SIZE = dict(min_size=240, max_size=400)  # 640x480 photos -> 320x240 model inputs


def write_photos(folder: str, count: int, seed: int = 0, size: tuple[int, int] = (640, 480)) -> None:
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        coarse = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize(size, Image.BILINEAR).save(f"{folder}/photo{i:05d}.jpg", quality=90)


def bare_images_per_s(folder: str, checkpoint: str, batch_size: int) -> float:
    inputs = list_inputs(folder)
    batch = load_images({k: np.array(v, dtype=object) for k, v in inputs.to_pydict().items()}, **SIZE,
                        max_pixels=10**8)
    saved = torch.load(checkpoint, weights_only=True)
    detector = Detector((saved["config"], saved["model"]), "bench", score_threshold=0.5, cpus=1)
    detector({k: v[:batch_size] for k, v in batch.items()})  # warm-up
    started = time.perf_counter()
    for i in range(0, len(inputs), batch_size):
        detector({k: v[i:i + batch_size] for k, v in batch.items()})
    return len(inputs) / (time.perf_counter() - started)


def start_s3() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except OSError:
            time.sleep(0.2)
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_DEFAULT_REGION="us-east-1")
    import pyarrow.fs as pafs
    pafs.S3FileSystem(endpoint_override=endpoint, allow_bucket_creation=True, region="us-east-1").create_dir("bench")
    return proc, "s3://bench"


def peak_job_memory(args: list[str]) -> tuple[float, float]:
    """(peak PSS in MiB over the job's process tree, seconds) of jobs/detect.py with its own Ray."""
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    proc = psutil.Popen([sys.executable, "jobs/detect.py", *args], env=env,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak, started = 0.0, time.time()
    while proc.poll() is None:
        total = 0
        for p in [proc, *proc.children(recursive=True)]:
            try:
                total += p.memory_full_info().pss
            except psutil.Error:
                pass
        peak = max(peak, total / 2**20)
        time.sleep(0.5)
    if proc.returncode:
        raise RuntimeError(f"jobs/detect.py failed ({proc.returncode})")
    return peak, time.time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--memory-images", type=int, default=100, help="N of the N vs 10N memory comparison")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="bench-detect-")
    torch.manual_seed(0)
    checkpoint = save_checkpoint(f"{work}/tiny.pt", build_detr("detr-tiny", num_classes=12))
    write_photos(f"{work}/photos", args.images)
    results: dict = {"images": args.images, "batch_size": args.batch_size, "threads": 1}

    results["bare_images_per_s"] = round(bare_images_per_s(f"{work}/photos", checkpoint, args.batch_size), 2)
    s3, bucket = start_s3()
    try:
        for name in sorted(os.listdir(f"{work}/photos")):
            uris.write_bytes(f"{bucket}/photos/{name}", open(f"{work}/photos/{name}", "rb").read())
        ray.init(num_cpus=2, runtime_env={"env_vars": {k: os.environ[k] for k in os.environ if k.startswith("AWS_")}})
        for source, images, output in (("local", f"{work}/photos", f"{work}/out"),
                                       ("s3", f"{bucket}/photos", f"{bucket}/out")):
            summary = run_detection(DetectConfig(images=images, output=output, checkpoint=checkpoint, **SIZE,
                                                 batch_size=args.batch_size, actors=(1, 1), cpus_per_actor=1))
            assert summary["rows"] == args.images and summary["duplicates"] == 0
            results[f"pipeline_{source}_images_per_s"] = summary["images_per_second"]
            results[f"ratio_{source}"] = round(summary["images_per_second"] / results["bare_images_per_s"], 3)
        ray.shutdown()
    finally:
        s3.terminate()

    for count in (args.memory_images, 10 * args.memory_images):
        write_photos(f"{work}/mem{count}", count, seed=1)
        peak, seconds = peak_job_memory(["--images", f"{work}/mem{count}", "--output", f"{work}/memout{count}",
                                         "--checkpoint", checkpoint, "--min-size", "240", "--max-size", "400",
                                         "--actors", "1,1"])
        results[f"peak_pss_mib_{count}"] = round(peak)
        results[f"seconds_{count}"] = round(seconds, 1)
    n = args.memory_images  # the two job runs differ by 9N images: start-up costs cancel out
    steady = 9 * n / (results[f"seconds_{10 * n}"] - results[f"seconds_{n}"])
    results["pipeline_steady_images_per_s"] = round(steady, 2)
    results["ratio_steady"] = round(steady / results["bare_images_per_s"], 3)
    results["memory_ratio_10x"] = round(results[f"peak_pss_mib_{10 * args.memory_images}"]
                                        / results[f"peak_pss_mib_{args.memory_images}"], 3)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
