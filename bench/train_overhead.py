"""Ray Train overhead: images/s of one Ray Train worker / images/s of a plain PyTorch loop.

Both train the same model (same preset, batch size, threads) on the same synthetic set.
The plain loop runs over batches decoded and augmented beforehand, so the ratio prices
everything Ray adds: streaming ingest (decode + augment in Ray Data tasks, on the same
cores here), the worker process, reporting and checkpoints.

    python -m bench.train_overhead [--images 96] [--epochs 3] [--batch-size 4] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch

from model import build_criterion, get_config, build_detr
from pipeline.coco import load_coco
from pipeline.data import _load_and_augment, _records, collate
from pipeline.synthetic import make_synthetic
from pipeline.training import TrainConfig, _param_groups, run_training


def plain_loop_images_per_s(cfg: TrainConfig, epochs: int) -> float:
    dataset = load_coco(cfg.annotations, cfg.images)
    records = _records(dataset)
    batches = []
    for start in range(0, len(records), cfg.batch_size):  # read, decode and augment up front
        chunk = records[start : start + cfg.batch_size]
        columns = {k: [r[k] for r in chunk] for k in chunk[0]}
        batches.append(_load_and_augment(columns, cfg.augment, train=True))
    config = get_config(cfg.preset, num_classes=dataset.num_classes, **cfg.model_overrides)
    model = build_detr(config).train()
    criterion = build_criterion(config.num_classes, config.dec_layers, eos_coef=cfg.eos_coef,  # as the worker's
                                aux_loss=config.aux_loss, two_stage=config.two_stage,
                                encoder_matches=cfg.encoder_matches)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    device = torch.device("cpu")
    rates = []
    for _ in range(epochs):
        started, seen = time.perf_counter(), 0
        for batch in batches:
            images, mask, targets = collate(batch, device, config.image_mean, config.image_std)
            loss = criterion.total_loss(criterion(model(images, mask), targets))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_max_norm)
            optimizer.step()
            seen += len(images)
        rates.append(seen / (time.perf_counter() - started))
    return max(rates[1:] or rates)  # skip the warm-up epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2, help="torch threads in both loops")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    with tempfile.TemporaryDirectory() as folder:
        data = make_synthetic(os.path.join(folder, "data"), train=args.images, val=0, seed=0)
        cfg = TrainConfig(annotations=data["train_annotations"], images=data["train_images"],
                          storage=os.path.join(folder, "runs"), name="overhead", epochs=args.epochs,
                          batch_size=args.batch_size, cpus_per_worker=float(args.threads), data_cpus=0.5,
                          augment_scale=0.25, model_overrides={"num_queries": 20})
        torch.set_num_threads(args.threads)
        plain = plain_loop_images_per_s(cfg, args.epochs)
        print(f"plain PyTorch loop (pre-decoded): {plain:.2f} images/s", flush=True)
        ray.init(num_cpus=args.threads + 1, include_dashboard=False)
        summary = run_training(cfg)
        ray.shutdown()
    ray_ips = summary["metrics"]["images_per_s"]  # last epoch, as the worker measured it
    print(f"Ray Train worker (streamed ingest): {ray_ips:.2f} images/s", flush=True)
    print(json.dumps({"plain_images_per_s": plain, "ray_train_images_per_s": ray_ips,
                      "ratio": ray_ips / plain, "threads": args.threads, "batch_size": args.batch_size}))


if __name__ == "__main__":
    main()
