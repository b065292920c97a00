"""Ray Train overhead: images/s of one Ray Train worker / images/s of a plain PyTorch loop.

Both train the same model (same preset, loss, batch size, torch threads) on the same
synthetic set for the same epochs, timed over every epoch but the first (warm-up). The
plain loop runs over samples decoded and augmented beforehand, a fresh augmentation per
epoch as the worker's; the worker streams its data through Ray Data, reading, decoding and
augmenting as it trains, as `jobs/train.py` does. The ratio prices Ray Train plus streaming
ingest. The worker times its epochs without the end-of-epoch report and checkpoint.

Machines drift (a shared 2-core VM by 10-15% from one minute to the next), so the runs
alternate: plain, Ray, plain, Ray, ..., plain; each Ray run is divided by the mean of the
plain runs either side, and the median ratio is reported. Each loop also reports the CPU
time its training thread spent per image: about equal in both while the ratio is below 1
says the worker does the same work but spends time off its core (waiting for the next
batch, or preempted by other processes).

The Ray cluster declares threads + 1 CPUs: the worker reserves `threads`, and Ray Data's
tasks run on the one left. With --threads 1 on a 2-core machine those tasks have a core of
their own, as on a GPU node or a machine with cores to spare; with --threads 2 they compete
with the training step for the same two cores.

    python -m bench.train_overhead [--images 480] [--epochs 3]
        [--rounds 3] [--batch-size 4] [--threads 1]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import statistics
import tempfile
import time

import torch

from bench.local_ray import ray_unless_connected
from model.config import get_config
from model.criterion import build_criterion
from model.segmentation import build_detr
from pipeline.coco import load_coco
from pipeline.synthetic import make_synthetic
from pipeline.training.config import TrainConfig
from pipeline.training.run import fit
from pipeline.training.step import param_groups
from pipeline.training.stream import collate, load_and_augment, records_of


def _samples(cfg: TrainConfig, records: list[dict]) -> list[dict]:
    """One augmentation of every record, a row per sample, as the worker's stream makes them."""
    batch = load_and_augment({k: [r[k] for r in records] for k in records[0]}, cfg.augment)
    return [dict(zip(batch, values)) for values in zip(*batch.values())]


def _batches(samples: list[dict], batch_size: int, seed: int) -> list[dict[str, list]]:
    samples = random.Random(seed).sample(samples, len(samples))
    return [{k: [s[k] for s in samples[i : i + batch_size]] for k in samples[0]}
            for i in range(0, len(samples), batch_size)]


def plain_loop(cfg: TrainConfig, epochs: list[list[dict]], num_classes: int) -> tuple[float, float]:
    """Images/s and CPU ms per image of the training thread over the given batches."""
    config = get_config(cfg.preset, num_classes=num_classes, **cfg.model_overrides)
    model = build_detr(config).train()
    criterion = build_criterion(config.num_classes, config.dec_layers, eos_coef=cfg.eos_coef,  # as the worker's
                                aux_loss=config.aux_loss, two_stage=config.two_stage,
                                encoder_matches=cfg.encoder_matches)
    optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    device = torch.device("cpu")
    seen, seconds, cpu_seconds = 0, 0.0, 0.0
    for epoch, batches in enumerate(epochs):
        started, cpu0 = time.perf_counter(), time.thread_time()
        for batch in batches:
            images, mask, targets = collate(batch, device, cfg.contract().image_mean, cfg.contract().image_std)
            loss = criterion.total_loss(criterion(model(images, mask), targets))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_max_norm)
            optimizer.step()
            if epoch > 0:
                seen += len(images)
        if epoch > 0:
            seconds += time.perf_counter() - started
            cpu_seconds += time.thread_time() - cpu0
    return seen / seconds, 1000 * cpu_seconds / seen


def ray_worker(cfg: TrainConfig) -> tuple[float, float]:
    """Images/s and CPU ms per image of the training thread, from the epochs the worker
    reported (its own timing, reporting excluded)."""
    result, _ = fit(cfg)
    epochs = result.metrics_dataframe.sort_values("epoch").iloc[1:]
    images = float((epochs["images_per_s"] * epochs["epoch_seconds"]).sum())
    return images / epochs["epoch_seconds"].sum(), 1000 * epochs["cpu_seconds"].sum() / images


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=480)
    parser.add_argument("--epochs", type=int, default=3, help="the first is warm-up, not timed")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="Ray runs, each between two plain runs")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                        help="torch threads in both loops (default: cores - 1)")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first is not timed)")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    with tempfile.TemporaryDirectory() as folder:
        data = make_synthetic(os.path.join(folder, "data"), train=args.images, val=0, seed=0)
        cfg = TrainConfig(annotations=data["train_annotations"], images=data["train_images"],
                          storage=os.path.join(folder, "runs"), name="overhead", epochs=args.epochs,
                          batch_size=args.batch_size, cpus_per_worker=float(args.threads), data_cpus=0.5,
                          augment_scale=0.25, model_overrides={"num_queries": 20})
        dataset = load_coco(cfg.annotations, cfg.images)
        records = records_of(dataset)
        torch.set_num_threads(args.threads)
        plain, plain_cpu, workers, workers_cpu, ratios = [], [], [], [], []

        def run_plain() -> None:
            # prepared untimed: a fresh augmentation per epoch, as the stream gives
            epochs = [_batches(_samples(cfg, records), cfg.batch_size, seed=e) for e in range(cfg.epochs)]
            speed, cpu = plain_loop(cfg, epochs, dataset.num_classes)
            plain.append(speed)
            plain_cpu.append(cpu)
            print(f"plain PyTorch loop (pre-decoded): {speed:.2f} images/s, {cpu:.1f} CPU ms/image", flush=True)

        run_plain()
        for round_ in range(args.rounds):
            with ray_unless_connected(num_cpus=args.threads + 1, include_dashboard=False):  # down during plain loops
                speed, cpu = ray_worker(dataclasses.replace(cfg, name=f"overhead{round_}"))
            workers.append(speed)
            workers_cpu.append(cpu)
            print(f"Ray Train worker (streamed ingest): {speed:.2f} images/s, {cpu:.1f} CPU ms/image",
                  flush=True)
            run_plain()
            ratios.append(workers[-1] / statistics.mean(plain[-2:]))  # the plain runs either side
    print(json.dumps({"ratio": statistics.median(ratios), "ratios": ratios,
                      "ray_train_images_per_s": workers, "plain_images_per_s": plain,
                      "ray_train_cpu_ms_per_image": workers_cpu, "plain_cpu_ms_per_image": plain_cpu,
                      "threads": args.threads, "batch_size": args.batch_size, "images": args.images}))


if __name__ == "__main__":
    main()
