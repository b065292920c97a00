"""End-to-end demo of what the project does so far, on embedded defaults (no downloads).

Builds the small CPU preset, saves and re-loads it as a checkpoint, runs it on a few
generated images and draws its top detections. The weights are untrained, so the boxes
are arbitrary: the demo shows the path, not accuracy.

    python jobs/demo.py --out demo-output
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torchvision.transforms.v2.functional as TF
from torchvision.io import write_png
from torchvision.utils import draw_bounding_boxes

from model import PostProcess, build_detr, load_checkpoint, optimize_for_inference, save_checkpoint


def demo_images(count: int, seed: int) -> list[torch.Tensor]:
    """uint8 3xHxW images of a few filled rectangles on a gradient, sizes 96-224 px."""
    generator = torch.Generator().manual_seed(seed)
    images = []
    for _ in range(count):
        height, width = (int(v) for v in torch.randint(96, 225, (2,), generator=generator))
        ramp = torch.linspace(40, 200, width).expand(height, width)
        image = torch.stack([ramp, ramp.flip(-1), torch.full_like(ramp, 120)]).clone()
        for _ in range(3):
            y0, x0 = int(torch.randint(0, height - 24, (1,), generator=generator)), int(
                torch.randint(0, width - 24, (1,), generator=generator)
            )
            size = int(torch.randint(16, 48, (1,), generator=generator))
            image[:, y0 : y0 + size, x0 : x0 + size] = torch.randint(0, 256, (3, 1, 1), generator=generator).float()
        images.append(image.to(torch.uint8))
    return images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo-output", help="folder for the checkpoint and pictures")
    parser.add_argument("--images", type=int, default=3, help="number of generated images")
    parser.add_argument("--top-k", type=int, default=5, help="detections drawn per image")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.time()
    os.makedirs(args.out, exist_ok=True)

    torch.manual_seed(args.seed)
    net = build_detr("detr-tiny", num_classes=4)
    checkpoint = save_checkpoint(os.path.join(args.out, "detr-tiny"), net)
    print(f"saved {checkpoint}", flush=True)
    net, config = load_checkpoint(checkpoint)
    net = optimize_for_inference(net)

    images = demo_images(args.images, args.seed)
    inputs = [TF.normalize(TF.to_dtype(img, torch.float32, scale=True), config.image_mean, config.image_std) for img in images]
    with torch.inference_mode():
        outputs = net(inputs)
    sizes = torch.tensor([img.shape[1:] for img in images])
    detections = PostProcess(top_k=args.top_k)(outputs, sizes)

    pictures = []
    for i, (image, found) in enumerate(zip(images, detections)):
        labels = [f"{int(l)}: {float(s):.2f}" for l, s in zip(found["labels"], found["scores"])]
        drawn = draw_bounding_boxes(image, found["boxes"], labels=labels, colors="yellow")
        path = os.path.join(args.out, f"detections_{i}.png")
        write_png(drawn, path)
        pictures.append(path)
        print(f"image {i}: {tuple(image.shape[1:])} -> {len(labels)} boxes drawn to {path}", flush=True)

    print(json.dumps({
        "checkpoint": checkpoint,
        "preset": "detr-tiny",
        "images": len(images),
        "pictures": pictures,
        "seconds": round(time.time() - started, 2),
    }))


if __name__ == "__main__":
    main()
