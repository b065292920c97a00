"""Every GPU figure of the project in one command: `make bench-gpu` (python -m bench.gpu).

On a GPU (detr-r50, random weights, bf16; a few thousand JPEGs at COCO's photo sizes made on the
spot; detection at the paper's 800 / 1333) it measures, each part checked as it runs and a failure
reported in that part's entry instead of stopping the rest:

- detection: the detection path end to end in one process (the read stage's threads, the one
  decoder with nvJPEG, canvases, batches, the model: what one actor of `jobs/detect.py` does, as
  Ray need not be installed) for batches of 8, 16 and 32: images/s, the bare model's images/s on
  the same canvases decoded beforehand (the limit), their ratio, the actor alone on rows read
  beforehand (as Ray's read tasks feed it), batch_fill, GPU memory peak;
- decode: nvJPEG's batched decode against the CPU decoder on the same files, images/s of each and
  the largest pixel difference;
- training: one worker's step (`pipeline.training.train_step`: bf16 autocast, float32 heads) at
  800x1066, batches of 2 and 4: images/s, memory peak, the loss finite;
- onnx: the exported graph on ONNX Runtime's CUDA provider against PyTorch (float32) on the same
  canvases: outputs within 1e-3, images/s of each;
- bf16: detections in bf16 against float32 on the same images: largest box (px) and score change;
- families: RT-DETRv2-R18 and D-FINE-S (transformers' classes, random weights, 640x640): bulk
  detection images/s in bf16 against the bare model and against transformers' own image processor
  + model loop on the same photos, and a training step's images/s (the family's loss, batch 16).

Prints one JSON line. `--small` runs the same on a CPU in seconds (the shipped detr-tiny, a few
small images, the CPU decoder and provider): the test suite runs it, so that the command works
the first time a GPU is at hand.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from model.checkpoint import load_checkpoint, save_checkpoint
from model.contract import InputContract
from model.criterion import build_criterion
from model.export import export_checkpoint
from model.inference import optimize_for_inference
from model.onnx_model import OnnxDetr, import_onnxruntime
from model.segmentation import build_detr
from pipeline.detection.actor import Detector, model_batches, to_canvas
from pipeline.detection.read import fetch
from pipeline.images import decode_images, probe
from pipeline.training.config import TrainConfig
from pipeline.training.step import param_groups, train_step

# (height, width) of common COCO photos: most are 640 on their longer side
COCO_SIZES = ((480, 640), (427, 640), (640, 480), (640, 427), (425, 640), (612, 612), (375, 500), (480, 640),
              (360, 640), (640, 640), (512, 640), (640, 512), (333, 500), (500, 375), (424, 640), (640, 424))
TOLERANCE = 1e-3  # ONNX Runtime against PyTorch, float32
SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints" / "detr-tiny-shapes.pt"


class Setting:
    """What one run measures with: model, sizes and counts, GPU or small."""

    def __init__(self, small: bool, images: int, folder: str):
        self.small = small
        self.device = torch.device("cpu" if small or not torch.cuda.is_available() else "cuda")
        self.preset = "detr-tiny" if small else "detr-r50"
        self.contract = InputContract(160, 267) if small else InputContract()
        self.batches = (2, 4) if small else (8, 16, 32)
        self.train_size, self.train_batches = ((128, 160), (2,)) if small else ((800, 1066), (2, 4))
        self.folder = folder
        if small:  # trained: an untrained two-stage model's near-equal scores pick queries by rounding
            self.model, _ = load_checkpoint(str(SHIPPED))
            self.checkpoint = str(SHIPPED)
        else:  # random weights: speed, not accuracy
            torch.manual_seed(0)
            self.model = build_detr(self.preset, num_classes=91).eval()
            self.checkpoint = save_checkpoint(os.path.join(folder, "model.pt"), self.model, contract=self.contract)
        self.paths = write_photos(os.path.join(folder, "photos"), images, 0.25 if small else 1.0)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def write_photos(folder: str, count: int, scale: float) -> list[str]:
    """JPEGs at COCO's sizes: smooth colour fields with noise, as photos compress."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        height, width = (max(16, round(v * scale)) for v in COCO_SIZES[i % len(COCO_SIZES)])
        coarse = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).resize((width, height))
        pixels = np.asarray(coarse, np.int16) + rng.integers(-12, 12, (height, width, 3))
        path = os.path.join(folder, f"photo{i:05d}.jpg")
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def rows_of(paths: list[str]) -> pa.Table:
    return pa.table({"path": pa.array(paths, pa.large_string()), "image_id": pa.nulls(len(paths), pa.int64()),
                     "shard": pa.array([0] * len(paths), pa.int32())})


def timed(setting: Setting, fn: Callable[[], Any]) -> float:
    setting.synchronize()
    started = time.perf_counter()
    fn()
    setting.synchronize()
    return time.perf_counter() - started


def peak_memory_gib(setting: Setting) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if setting.device.type == "cuda" else None


# ---------------------------------------------------------------- the parts

def detection(setting: Setting) -> dict[str, Any]:
    """The detection path end to end and the bare model, per batch size."""
    out: dict[str, Any] = {"images": len(setting.paths),
                           "sizes": [setting.contract.min_size, setting.contract.max_size]}
    window = 256
    for batch_size in setting.batches:
        detector = Detector.of_model(setting.model.to(setting.device), setting.contract, 0.05, batch_size)
        detector(fetch(rows_of(setting.paths[:window]), setting.contract, 10**9))  # warm-up: kernels, allocator
        if setting.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        calls = []

        def end_to_end() -> None:
            for start in range(0, len(setting.paths), window):
                table = detector(fetch(rows_of(setting.paths[start:start + window]), setting.contract, 10**9))
                assert table.num_rows == min(window, len(setting.paths) - start)
                assert all(error is None for error in table["error"].to_pylist()), "error rows"
                calls.append(sum(table["call_share"].to_pylist()))

        seconds = timed(setting, end_to_end)
        fetched = [fetch(rows_of(setting.paths[start:start + window]), setting.contract, 10**9)
                   for start in range(0, len(setting.paths), window)]
        actor_seconds = timed(setting, lambda: [detector(rows) for rows in fetched])
        bare = bare_images_per_s(setting, detector, batch_size, window)
        pipeline = len(setting.paths) / seconds
        actor = len(setting.paths) / actor_seconds
        out[f"batch_{batch_size}"] = {
            "images_per_s": round(pipeline, 1), "bare_images_per_s": round(bare, 1),
            "pipeline_over_bare": round(pipeline / bare, 3),
            # the actor alone, its rows read beforehand (in bulk detection, Ray's read tasks do that on other CPUs)
            "actor_images_per_s": round(actor, 1), "actor_over_bare": round(actor / bare, 3),
            "batch_fill": round(len(setting.paths) / sum(calls) / batch_size, 3),
            "gpu_memory_peak_gib": peak_memory_gib(setting)}
    return out


def bare_images_per_s(setting: Setting, detector: Detector, batch_size: int, window: int) -> float:
    """The model alone on the same canvas batches, decoded beforehand."""
    prepared = []
    for start in range(0, len(setting.paths), window):
        rows = fetch(rows_of(setting.paths[start:start + window]), setting.contract, 10**9)
        for canvas, indices in model_batches(rows["canvas_height"].to_pylist(), rows["canvas_width"].to_pylist(),
                                             rows["error"].to_pylist(), batch_size):
            images, _ = detector.decode(rows, (canvas, indices))
            sizes = [(rows["height"][i].as_py(), rows["width"][i].as_py()) for i in indices]
            prepared.append(([images[i] for i in indices], canvas, sizes))
    seconds = timed(setting, lambda: [detector.forward(*batch) for batch in prepared])
    return len(setting.paths) / seconds


def decode(setting: Setting) -> dict[str, Any]:
    """Batched decode on the model's device against the CPU decoder, same files."""
    items = [(open(p, "rb").read(), None) for p in setting.paths[:512]]
    items = [(data, probe(data)) for data, _ in items]
    cpu = torch.device("cpu")
    decode_images(items[:8], setting.device)  # warm-up
    on_device: list = []
    on_cpu: list = []
    device_s = timed(setting, lambda: on_device.extend(
        image for k in range(0, len(items), 64) for image in decode_images(items[k:k + 64], setting.device)))
    cpu_s = timed(setting, lambda: on_cpu.extend(decode_images(items, cpu)))
    worst = max(int((a.cpu().int() - b.int()).abs().max()) for a, b in zip(on_device, on_cpu))
    return {"decoder": "nvJPEG" if setting.device.type == "cuda" else "libjpeg-turbo (CPU)",
            "images": len(items), "images_per_s": round(len(items) / device_s, 1),
            "cpu_images_per_s": round(len(items) / cpu_s, 1), "largest_pixel_difference": worst}


def training(setting: Setting) -> dict[str, Any]:
    """One worker's training step at the paper's sizes."""
    model = build_detr(setting.preset, num_classes=91).to(setting.device).train()
    criterion = build_criterion(91, model.config.dec_layers, two_stage=model.config.two_stage).to(setting.device)
    cfg = TrainConfig("", "", "", "", preset=setting.preset)
    optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    out: dict[str, Any] = {"size": "x".join(map(str, setting.train_size))}
    height, width = setting.train_size
    for batch in setting.train_batches:
        images = torch.randn(batch, 3, height, width, device=setting.device)
        mask = torch.zeros(batch, height, width, dtype=torch.bool, device=setting.device)
        targets = [{"labels": torch.randint(1, 91, (5,), device=setting.device),
                    "boxes": torch.rand(5, 4, device=setting.device) * 0.4 + 0.3} for _ in range(batch)]
        step = 0
        losses = []

        def steps(count: int) -> None:
            nonlocal step
            for _ in range(count):
                loss, _, _ = train_step(model, criterion, optimizer, (images, mask, targets), cfg, step)
                losses.append(loss.item())
                step += 1

        steps(2)  # warm-up
        if setting.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        count = 3 if setting.small else 10
        seconds = timed(setting, lambda: steps(count))
        assert all(math.isfinite(v) for v in losses), f"loss not finite: {losses}"
        out[f"batch_{batch}"] = {"images_per_s": round(batch * count / seconds, 2),
                                 "gpu_memory_peak_gib": peak_memory_gib(setting), "loss": round(losses[-1], 3)}
    return out


def onnx(setting: Setting) -> dict[str, Any]:
    """The exported graph on ONNX Runtime (CUDA provider on a GPU) against PyTorch, float32."""
    provider = "CUDAExecutionProvider" if setting.device.type == "cuda" else "CPUExecutionProvider"
    if provider not in import_onnxruntime().get_available_providers():
        raise RuntimeError(f"this onnxruntime has no {provider}: install onnxruntime-gpu")
    graph_path = os.path.join(setting.folder, "model.onnx")
    export_checkpoint(setting.checkpoint, graph_path, log=lambda line: None)
    graph = OnnxDetr(open(graph_path, "rb").read(), setting.device.type)
    model = optimize_for_inference(setting.model).to(setting.device)
    batch, canvas = canvases(setting, setting.batches[0])
    with torch.inference_mode():
        want = model(*batch)
        got = graph(*batch)
        worst = max(float((got[k].float() - want[k].float()).abs().max()) for k in ("pred_logits", "pred_boxes"))
        repeats = 3 if setting.small else 10
        torch_s = timed(setting, lambda: [model(*batch) for _ in range(repeats)])
        ort_s = timed(setting, lambda: [graph(*batch) for _ in range(repeats)])
    assert worst <= TOLERANCE, f"ONNX Runtime differs from PyTorch by {worst:.3g} (tolerance {TOLERANCE})"
    images = repeats * batch[0].shape[0]
    return {"provider": provider, "canvas": "x".join(map(str, canvas)), "max_abs_difference": worst,
            "images_per_s": round(images / ort_s, 2), "torch_images_per_s": round(images / torch_s, 2)}


def bf16(setting: Setting) -> dict[str, Any]:
    """Every query's box (in canvas pixels) and score in bf16 autocast against float32; for a
    two-stage model every encoder token's proposal (its queries are chosen among them by score,
    so a query of one precision need not be the same token in the other)."""
    model = optimize_for_inference(setting.model).to(setting.device)
    (pixels, mask), canvas = canvases(setting, setting.batches[-1])
    scale = torch.tensor([canvas[1], canvas[0], canvas[1], canvas[0]], device=setting.device)
    compared = "encoder proposals" if model.config.two_stage else "queries"

    def boxes_and_scores() -> tuple[torch.Tensor, torch.Tensor]:
        out = model(pixels, mask)
        out = out["enc_outputs"] if model.config.two_stage else out
        return out["pred_boxes"].float() * scale, out["pred_logits"].float().softmax(-1)[..., :-1].max(-1).values

    with torch.inference_mode():
        exact_boxes, exact_scores = boxes_and_scores()
        with torch.autocast(setting.device.type, dtype=torch.bfloat16):
            fast_boxes, fast_scores = boxes_and_scores()
    box = float((fast_boxes - exact_boxes).abs().max())
    score = float((fast_scores - exact_scores).abs().max())
    return {"canvas": "x".join(map(str, canvas)), "images": pixels.shape[0], "compared": compared,
            "largest_box_change_px": round(box, 3), "largest_score_change": round(score, 5)}


def canvases(setting: Setting, batch_size: int) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[int, int]]:
    """A full batch of the commonest canvas: (pixels, mask) on the device, and the canvas."""
    rows = fetch(rows_of(setting.paths[:8 * batch_size]), setting.contract, 10**9)
    canvas, indices = max(model_batches(rows["canvas_height"].to_pylist(), rows["canvas_width"].to_pylist(),
                                        rows["error"].to_pylist(), batch_size), key=lambda b: len(b[1]))
    items = [(rows["data"][i].as_py(), probe(rows["data"][i].as_py())) for i in indices]
    images = decode_images(items, setting.device)
    mean = torch.tensor(setting.contract.image_mean, device=setting.device).view(3, 1, 1)
    std = torch.tensor(setting.contract.image_std, device=setting.device).view(3, 1, 1)
    return to_canvas(images, canvas, setting.contract, mean, std), canvas


# The descendants' speed rows, random weights (speed, not accuracy): transformers' configs shaped as
# the authors' RT-DETRv2-R18 (ResNet-18-vd, hybrid encoder of 256, 3 decoder layers) and D-FINE-S
# (HGNetV2-B0, depth 0.34, 3 decoder layers), at their 640x640 contract; --small: the tiny presets.
FAMILY_MODELS = {
    "rtdetr_v2_r18": {"model_type": "rt_detr_v2", "hf": {
        "backbone_config": {"model_type": "rt_detr_resnet", "embedding_size": 64, "hidden_sizes": [64, 128, 256, 512],
                            "depths": [2, 2, 2, 2], "layer_type": "basic", "downsample_in_bottleneck": True,
                            "out_features": ["stage2", "stage3", "stage4"], "out_indices": [2, 3, 4]},
        "encoder_in_channels": [128, 256, 512], "hidden_expansion": 0.5, "decoder_layers": 3, "num_labels": 80}},
    "dfine_s": {"model_type": "d_fine", "hf": {
        "backbone_config": {"model_type": "hgnet_v2", "stem_channels": [3, 16, 16], "hidden_sizes": [64, 256, 512, 1024],
                            "stage_in_channels": [16, 64, 256, 512], "stage_mid_channels": [16, 32, 64, 128],
                            "stage_out_channels": [64, 256, 512, 1024], "stage_num_blocks": [1, 1, 2, 1],
                            "stage_numb_of_layers": [3, 3, 3, 3], "stage_downsample": [False, True, True, True],
                            "stage_light_block": [False, False, True, True], "stage_kernel_size": [3, 3, 5, 5],
                            "out_features": ["stage2", "stage3", "stage4"], "out_indices": [2, 3, 4]},
        "encoder_in_channels": [256, 512, 1024], "hidden_expansion": 0.5, "depth_mult": 0.34, "decoder_layers": 3,
        "num_labels": 80}},
}


def families(setting: Setting) -> dict[str, Any]:
    """RT-DETRv2-R18 and D-FINE-S: bulk detection (bf16 on a GPU) against the bare model and
    against transformers' own image processor + model loop on the same photos; a training step."""
    from model.families import FAMILY_PRESETS, FamilyConfig
    from model.interface import build_model, preset_config

    out: dict[str, Any] = {}
    for name, spec in FAMILY_MODELS.items():
        if setting.small:
            preset = "rtdetr-tiny" if "rtdetr" in name else "dfine-tiny"
            config, contract = preset_config(preset, 80), FAMILY_PRESETS[preset][1]
        else:
            config = FamilyConfig.from_dict({"family": spec["model_type"], "hf": spec["hf"]})
            contract = InputContract(640, 640, fixed_size=(640, 640), image_mean=(0, 0, 0), image_std=(1, 1, 1))
        torch.manual_seed(0)
        model = build_model(config).eval()
        model.contract = contract
        family = Setting.__new__(Setting)  # one batch size: the largest
        family.__dict__.update(setting.__dict__, model=model.to(setting.device), contract=contract,
                               batches=setting.batches[-1:])
        try:
            out[name] = {**detection(family)[f"batch_{setting.batches[-1]}"],
                         "transformers_loop_images_per_s": transformers_loop(family, config),
                         "training": family_training(family, model)}
        except Exception as e:  # one family's failure reported, the other measured
            out[name] = {"error": f"{type(e).__name__}: {e}"}
    return out


def transformers_loop(setting: Setting, config: Any) -> float:
    """transformers' image processor + model + post-processing, as its docs run them, bf16 on a GPU."""
    import transformers
    from torchvision.io import decode_image

    h, w = setting.contract.fixed_size
    processor = transformers.RTDetrImageProcessor(size={"height": h, "width": w}, do_normalize=False)
    model = setting.model.model
    batch = setting.batches[-1]
    paths = setting.paths[:2 * batch] if setting.small else setting.paths[:512]

    def run() -> None:
        for start in range(0, len(paths), batch):
            images = [decode_image(p) for p in paths[start:start + batch]]
            inputs = processor(images=images, return_tensors="pt").to(setting.device)
            with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=setting.device.type == "cuda"):
                outputs = model(**inputs)
            processor.post_process_object_detection(outputs, threshold=0.05,
                                                    target_sizes=[i.shape[1:] for i in images])

    run()  # warm-up
    return round(len(paths) / timed(setting, run), 1)


def family_training(setting: Setting, model: torch.nn.Module) -> dict[str, Any]:
    """One worker's step (the family's own loss, float32 under bf16 autocast) at its contract's size."""
    model = model.to(setting.device).train()
    cfg = TrainConfig("", "", "", "", preset="rtdetr-tiny")
    optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=1e-4, weight_decay=cfg.weight_decay)
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    batch = 2 if setting.small else 16
    images = torch.rand(batch, 3, *setting.contract.fixed_size, device=setting.device)
    mask = torch.zeros(batch, *setting.contract.fixed_size, dtype=torch.bool, device=setting.device)
    targets = [{"labels": torch.randint(0, model.config.num_classes, (5,), device=setting.device),
                "boxes": torch.rand(5, 4, device=setting.device) * 0.4 + 0.3} for _ in range(batch)]
    losses = []
    for step in range(2):  # warm-up
        losses.append(train_step(model, None, optimizer, (images, mask, targets), cfg, step)[0].item())
    count = 2 if setting.small else 10
    seconds = timed(setting, lambda: losses.extend(
        train_step(model, None, optimizer, (images, mask, targets), cfg, 2 + k)[0].item() for k in range(count)))
    assert all(math.isfinite(v) for v in losses), f"loss not finite: {losses}"
    return {"batch": batch, "images_per_s": round(batch * count / seconds, 1), "loss": round(losses[-1], 3)}


PARTS = {"detection": detection, "decode": decode, "training": training, "onnx": onnx, "bf16": bf16,
         "families": families}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="detr-tiny on a few small images, on the CPU")
    parser.add_argument("--images", type=int, help="photos for detection (default 2048, --small 8)")
    parser.add_argument("--parts", nargs="*", choices=sorted(PARTS), default=list(PARTS), help="in this order")
    args = parser.parse_args()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as folder:
        setting = Setting(args.small, args.images or (8 if args.small else 2048), folder)
        result: dict[str, Any] = {
            "gpu": torch.cuda.get_device_name() if setting.device.type == "cuda" else None,
            "device": setting.device.type, "preset": setting.preset, "torch": torch.__version__}
        for name in args.parts:
            started_part = time.time()
            try:
                result[name] = PARTS[name](setting)
            except Exception as e:  # report it in the line, measure the rest
                result[name] = {"error": f"{type(e).__name__}: {e}",
                                "where": traceback.extract_tb(e.__traceback__)[-1].name}
            # each part as it ends, on stderr: a run stopped by a time limit still leaves its figures
            print(json.dumps({name: result[name], "seconds": round(time.time() - started_part, 1)}),
                  file=sys.stderr, flush=True)
    result["seconds"] = round(time.time() - started, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
