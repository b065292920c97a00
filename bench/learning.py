"""Learning from scratch: val AP/AP50 of a small preset against wall-clock training time.

Trains on a synthetic shapes set for a fixed time budget on this machine's CPU (plain
PyTorch loop over the project's own model, criterion, augmentation, and validation by the
detection path with COCO scoring, as the training job validates) and
prints the curve (minutes, AP, AP50, train loss) as JSON. Compare with the reference
recipe's anchor (AP50 0.002 after 15 minutes, ../shared/reference/LEARNING_ANCHOR.md).
Defaults are the preset's recipe (what TrainConfig gives it); --model changes the network
(DetrConfig fields as JSON values), e.g. the paper's learned queries: --model two_stage=false.
--preset rtdetr-tiny or dfine-tiny trains a transformers family's small preset (model/families.py)
with its own loss and fixed-size contract, on the same data, for the same time.

    python -m bench.learning [--preset detr-tiny] [--minutes 15] [--eval-every 3] [--lr 3e-4] [--model KEY=VALUE ...]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time

import numpy as np
import torch

import storage as uris
from model.checkpoint import save_checkpoint
from model.contract import InputContract
from model.criterion import build_criterion
from model.interface import build_model, preset_config, preset_contract
from pipeline.coco import load_coco
from pipeline.evaluation.metrics import evaluate
from pipeline.evaluation.scoring import CocoScorer
from pipeline.images import decode_image
from pipeline.synthetic import SyntheticConfig, make_synthetic
from pipeline.training.augment import AugmentConfig, train_transform
from pipeline.training.config import TrainConfig
from pipeline.training.step import warm_up
from pipeline.training.stream import augment_samples, collate
from pipeline.training.validation import detect_images


def load_split(annotations: str, images: str):
    dataset = load_coco(annotations, images)
    samples = [(decode_image(uris.read_bytes(r["path"])), np.array(r["boxes"], np.float32).reshape(-1, 4),
                np.array(r["labels"], np.int64), r["image_id"], None) for r in dataset.records()]  # no masks
    return dataset, samples


def parse_override(item: str) -> tuple[str, object]:
    """KEY=VALUE with a JSON value (false, 3, 0.1), else the value as a string (resnet18)."""
    key, _, value = item.partition("=")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=15.0, help="training time budget")
    p.add_argument("--eval-every", type=float, default=3.0, help="minutes between validation passes")
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--val", type=int, default=200)
    p.add_argument("--data", help="existing make_synthetic folder (default: generate one)")
    p.add_argument("--preset", default="detr-tiny")
    p.add_argument("--model", nargs="*", default=[], metavar="KEY=VALUE", help="DetrConfig overrides (JSON values)")
    p.add_argument("--lr", type=float, help="default: the preset's recipe (what the training job uses)")
    p.add_argument("--lr-backbone", type=float)
    p.add_argument("--warmup", type=int, help="steps of linear learning-rate warm-up")
    p.add_argument("--encoder-matches", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr-drop-at", type=float, default=0.8, help="fraction of the budget after which lr x0.1")
    p.add_argument("--augment-scale", type=float, default=0.2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", help="write the trained model here (a checkpoint the detection job reads)")
    args = p.parse_args(argv)
    recipe = TrainConfig("", "", "", "", preset=args.preset)  # the recipe the training job uses
    for name, field in (("lr", "lr"), ("lr_backbone", "lr_backbone"), ("warmup", "warmup_steps"),
                        ("encoder_matches", "encoder_matches"), ("batch_size", "batch_size")):
        if getattr(args, name) is None:
            setattr(args, name, getattr(recipe, field))
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)

    if args.data:
        train(args, args.data)
    else:
        with tempfile.TemporaryDirectory() as folder:  # validation reads the files, as detection does
            train(args, make_synthetic(os.path.join(folder, "shapes"), args.train, args.val, seed=args.seed,
                                       config=SyntheticConfig(min_side=96, max_side=192, max_objects=4))["out"])


def train(args: argparse.Namespace, data: str) -> None:
    train_set, train_samples = load_split(f"{data}/annotations/train.json", f"{data}/train")
    val_set = load_coco(f"{data}/annotations/val.json", f"{data}/val")
    gt = CocoScorer(val_set.raw)
    augment = AugmentConfig().scaled(args.augment_scale)
    # validation = detection; a family's preset keeps its own fixed-size contract
    contract = preset_contract(args.preset) or InputContract(min_size=augment.val_size, max_size=augment.max_size)
    overrides = dict(parse_override(item) for item in args.model)
    model = build_model(preset_config(args.preset, train_set.num_classes, **overrides)).train()
    model.contract = contract
    family = preset_contract(args.preset) is not None
    criterion = None if family else build_criterion(
        model.config.num_classes, model.config.dec_layers, two_stage=model.config.two_stage,
        encoder_matches=args.encoder_matches)
    backbone = [p for n, p in model.named_parameters() if "backbone" in n.split(".") and p.requires_grad]
    rest = [p for n, p in model.named_parameters() if "backbone" not in n.split(".") and p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": rest, "lr": args.lr}, {"params": backbone, "lr": args.lr_backbone}],
                                  weight_decay=1e-4)
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    transform = train_transform(augment)
    device = torch.device("cpu")
    curve, losses, steps, trained_s, next_eval, dropped = [], [], 0, 0.0, args.eval_every * 60, False
    print(f"{len(train_samples)} train / {len(val_set.images)} val images; recipe {vars(args)}", flush=True)
    while trained_s < args.minutes * 60:
        order = random.sample(range(len(train_samples)), len(train_samples))
        for start in range(0, len(order) - args.batch_size + 1, args.batch_size):
            tick = time.perf_counter()
            batch = augment_samples([train_samples[i] for i in order[start : start + args.batch_size]], transform)
            images, mask, targets = collate(batch, device, contract.image_mean, contract.image_std, contract)
            if criterion is None:  # a family's model: its own loss from the targets
                loss = model(images, mask, targets)["loss"]
            else:
                loss = criterion.total_loss(criterion(model(images, mask), targets))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
            warm_up(optimizer, steps, args.warmup)
            if not dropped and trained_s >= args.lr_drop_at * args.minutes * 60:
                dropped = True  # the paper's step drop, placed by time here
                for group in optimizer.param_groups:
                    group["lr"] *= 0.1
            optimizer.step()
            trained_s += time.perf_counter() - tick
            steps += 1
            losses.append(loss.item())
            if trained_s >= next_eval or trained_s >= args.minutes * 60:
                table = detect_images(model.eval(), val_set.records(), contract, args.batch_size)
                model.train()
                stats = evaluate([table], gt)["metrics"]
                point = {"minutes": round(trained_s / 60, 2), "steps": steps, "AP": stats["AP"],
                         "AP50": stats["AP50"], "train_loss": float(np.mean(losses[-50:]))}
                curve.append(point)
                print(json.dumps(point), flush=True)
                next_eval += args.eval_every * 60
                if trained_s >= args.minutes * 60:
                    break
    if args.save:
        save_checkpoint(args.save, model.eval(), contract=contract)
    print(json.dumps({"recipe": vars(args), "curve": curve,
                      "images_per_s": steps * args.batch_size / trained_s}))


if __name__ == "__main__":
    main()
