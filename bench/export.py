"""Exported ONNX graph on ONNX Runtime against the PyTorch model as detection runs it.

For each preset and image size, in one run: export time and file size, then, on the same
inputs and threads, the latency of one image (median) and images/s of a batch with ONNX
Runtime's CPU provider and with PyTorch (the detection actor's model: BatchNorm folded,
channels-last, inference mode). The ratio is onnxruntime images/s / PyTorch images/s
(goal >= 1 on CPU). On a GPU the same with the CUDA provider (and TensorRT's when installed).
detr-tiny is the shipped checkpoint; detr-r50 has random weights (speed does not depend on
them; an untrained two-stage model would not verify, its query scores being within rounding
of each other).

    python -m bench.export [--presets detr-tiny detr-r50] [--threads 2] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from model.checkpoint import load_checkpoint, save_checkpoint
from model.export import export_checkpoint, sample_batch
from model.inference import optimize_for_inference
from model.onnx_model import OnnxDetr
from model.segmentation import build_detr

SHIPPED = str(Path(__file__).resolve().parents[1] / "checkpoints" / "detr-tiny-shapes.pt")
SIZES = {"detr-tiny": ((128, 160), (256, 320)), "detr-r50": ((480, 640), (800, 1066))}
BATCH = {"detr-tiny": 8, "detr-r50": 2}


def timed(run, images, mask, repeats: int) -> list[float]:
    run(images, mask)  # warm-up: allocations, kernel selection
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        run(images, mask)
        seconds.append(time.perf_counter() - started)
    return seconds


def measure(preset: str, folder: Path, threads: int, device: str, repeats: int) -> list[dict]:
    if preset == "detr-tiny":
        checkpoint = SHIPPED
        model = load_checkpoint(checkpoint)[0]
    else:
        torch.manual_seed(0)
        model = build_detr(preset, num_classes=91).eval()
        checkpoint = save_checkpoint(str(folder / f"{preset}.pt"), model)
    report = export_checkpoint(checkpoint, str(folder / f"{preset}.onnx"))
    onnx = OnnxDetr((folder / f"{preset}.onnx").read_bytes(), device, threads=threads)
    eager = optimize_for_inference(model).to(device)

    def torch_run(images, mask):
        with torch.inference_mode():
            out = eager(images.to(device).contiguous(memory_format=torch.channels_last), mask.to(device))
            return out["pred_boxes"].cpu()

    results = []
    for height, width in SIZES[preset]:
        row = {"preset": preset, "size": f"{height}x{width}", "export_seconds": report["export_seconds"],
               "onnx_mb": round(report["bytes"] / 1e6, 1), "providers": onnx.providers[:1]}
        for name, run in (("onnxruntime", onnx), ("torch", torch_run)):
            one = timed(run, *sample_batch(1, height, width, False), repeats)
            batch = timed(run, *sample_batch(BATCH[preset], height, width, True), max(2, repeats // 2))
            row[f"{name}_latency_ms"] = round(statistics.median(one) * 1000, 1)
            row[f"{name}_images_per_s"] = round(BATCH[preset] / statistics.median(batch), 2)
        row["ratio_images_per_s"] = round(row["onnxruntime_images_per_s"] / row["torch_images_per_s"], 3)
        row["ratio_latency"] = round(row["torch_latency_ms"] / row["onnxruntime_latency_ms"], 3)
        print(json.dumps(row), flush=True)
        results.append(row)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["detr-tiny", "detr-r50"], choices=sorted(SIZES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        for preset in args.presets:
            measure(preset, Path(folder), args.threads, args.device, args.repeats)


if __name__ == "__main__":
    main()
