"""End-to-end demo on embedded defaults (no downloads): data -> training -> detections.

Writes a small synthetic shapes dataset, trains the small CPU preset on it with Ray Train
for a few epochs (a local Ray is started), then loads the last checkpoint and draws its
detections on validation images. A few CPU minutes do not make a good detector: the
demo shows the path end to end, not accuracy.

    python jobs/demo.py --out demo-output
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray  # noqa: E402
import torch  # noqa: E402
import torchvision.transforms.v2.functional as TF  # noqa: E402
from torchvision.io import write_png  # noqa: E402
from torchvision.utils import draw_bounding_boxes  # noqa: E402

from model import PostProcess, load_checkpoint, optimize_for_inference  # noqa: E402
from model import uri as uris  # noqa: E402
from pipeline.cluster import init_ray  # noqa: E402
from pipeline.coco import load_coco  # noqa: E402
from pipeline.synthetic import SyntheticConfig, make_synthetic  # noqa: E402
from pipeline.training import TrainConfig, run_training  # noqa: E402
from pipeline.transforms import decode  # noqa: E402


def draw_detections(checkpoint: str, val_annotations: str, val_images: str, out: str, count: int,
                    threshold: float) -> list[str]:
    """Run the checkpoint on `count` validation images and write them with boxes drawn."""
    net, config = load_checkpoint(checkpoint)
    net = optimize_for_inference(net)
    dataset = load_coco(val_annotations, val_images)
    names = {c["id"]: c["name"] for c in dataset.categories}
    postprocess = PostProcess(score_threshold=threshold, top_k=10)
    pictures = []
    for image_record in dataset.images[:count]:
        image = decode(uris.read_bytes(dataset.image_uri(image_record)))
        normalised = TF.normalize(TF.to_dtype(image, torch.float32, scale=True), config.image_mean, config.image_std)
        with torch.inference_mode():
            (found,) = postprocess(net(normalised), torch.tensor([image.shape[1:]]))
        labels = [f"{names.get(int(l), int(l))} {float(s):.2f}" for l, s in zip(found["labels"], found["scores"])]
        path = os.path.join(out, f"detections_{image_record['id']}.png")
        write_png(draw_bounding_boxes(image, found["boxes"], labels=labels, colors="yellow"), path)
        pictures.append(path)
    return pictures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo-output", help="folder for data, runs and pictures")
    parser.add_argument("--train", type=int, default=64, help="synthetic training images")
    parser.add_argument("--val", type=int, default=16, help="synthetic validation images")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--pictures", type=int, default=4, help="validation images drawn with detections")
    args = parser.parse_args()
    started = time.time()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    shutil.rmtree(os.path.join(out, "runs"), ignore_errors=True)  # a fresh run each time, not a resume

    data = make_synthetic(os.path.join(out, "data"), args.train, args.val, seed=0,
                          config=SyntheticConfig(min_side=96, max_side=192, max_objects=4))
    print(f"synthetic data: {args.train} train / {args.val} val images under {data['out']}", flush=True)

    init_ray()
    training = run_training(TrainConfig(
        annotations=data["train_annotations"], images=data["train_images"],
        val_annotations=data["val_annotations"], val_images=data["val_images"],
        storage=os.path.join(out, "runs"), name="demo", preset="detr-tiny", epochs=args.epochs, batch_size=4,
        cpus_per_worker=1.0, augment_scale=0.2,
    ))
    ray.shutdown()
    print(f"trained {training['metrics']['epoch']} epochs; last checkpoint {training['checkpoint']}", flush=True)

    pictures = draw_detections(training["checkpoint"], data["val_annotations"], data["val_images"], out,
                               args.pictures, threshold=0.0)
    print(f"drew detections on {len(pictures)} validation images in {out}", flush=True)
    print(json.dumps({
        "data": data["out"],
        "run": training["run"],
        "checkpoint": training["checkpoint"],
        "metrics": {k: training["metrics"].get(k) for k in ("epoch", "loss", "AP", "AP50")},
        "pictures": pictures,
        "seconds": round(time.time() - started, 1),
    }, default=str))


if __name__ == "__main__":
    main()
