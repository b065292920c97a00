"""Training images/s of one worker's step (pipeline.training.train_step) at a preset's sizes.

Times forward, loss, backward, clipping and AdamW on random images of the given size with a
few boxes each, after warm-up steps; on a GPU with bf16 autocast, as `jobs/train.py --gpu`
runs. This is the step alone (the ceiling of a worker); `bench.train_overhead` prices what
Ray Train and the streamed input add to it.

    python -m bench.train_throughput [--preset detr-r50] [--size 800 1066] [--batch 2] [--device cuda]
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from model.criterion import build_criterion
from model.segmentation import build_detr
from pipeline.training.config import TrainConfig
from pipeline.training.step import param_groups, train_step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="detr-r50")
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1066), metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_detr(args.preset, num_classes=91).to(device).train()
    criterion = build_criterion(91, model.config.dec_layers, two_stage=model.config.two_stage).to(device)
    cfg = TrainConfig("", "", "", "", preset=args.preset)  # the preset's recipe (its warm-up too)
    optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    torch.optim.lr_scheduler.StepLR(optimizer, cfg.lr_drop, cfg.lr_drop_gamma)  # as a worker: the warm-up's base
    height, width = args.size
    images = torch.randn(args.batch, 3, height, width, device=device)
    mask = torch.zeros(args.batch, height, width, dtype=torch.bool, device=device)
    targets = [{"labels": torch.randint(1, 91, (5,), device=device),
                "boxes": torch.rand(5, 4, device=device) * 0.4 + 0.3} for _ in range(args.batch)]
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        train_step(model, criterion, optimizer, (images, mask, targets), cfg, step)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    print(json.dumps({"preset": args.preset, "size": f"{height}x{width}", "batch": args.batch,
                      "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                      "precision": "bf16 autocast, float32 heads" if device.type == "cuda" else "float32",
                      "images_per_s": round(args.batch * args.steps / seconds, 3),
                      "seconds_per_step": round(seconds / args.steps, 3)}))


if __name__ == "__main__":
    main()
