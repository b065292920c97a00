"""Distributed DETR training on Ray Train (TorchTrainer): checkpoints, resume, fault tolerance.

Each epoch every worker streams its share of a fresh permutation of the training set,
steps AdamW, and reports losses; every eval_every epochs the workers predict their shares
of the validation batches and rank 0 scores them all; rank 0 attaches a checkpoint
(save_checkpoint format) and the COCO AP. Re-running with the same storage and
name resumes from the latest checkpoint; after a worker failure Ray restarts the group
(FailureConfig) and training continues from that checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import ray
import ray.train
import ray.train.torch
import torch

from model import InputContract, build_criterion, build_detr, get_config, load_checkpoint, save_checkpoint
from model import uri as uris
from model.checkpoint import CHECKPOINT_FILE, safe_torch_load

from . import predictions
from .cluster import wait_for
from .coco import CocoDataset, load_coco
from .data import collate, epoch_order, records_of, sample_stream, shuffle_buffer, worker_share
from .detector import SCORE_THRESHOLD, Detector
from .evaluation import DEFAULT_BACKEND, CocoScorer, evaluate_predictions
from .fetch import fetch
from .images import MAX_PIXELS
from .progress import StepProgress
from .transforms import AugmentConfig

# Ray starts workers at niceness 15, below its own daemons (raylet, GCS, agents), whose
# frequent short wake-ups then preempt the training step. At 0, as a driver runs, the
# training workers keep their cores; Ray Data's decode/augment tasks stay at 15 and so
# take what the step leaves. On a 2-core VM the gain in bench/train_overhead.py was
# within its noise (bench/README.md).
WORKER_RUNTIME_ENV = {"env_vars": {"RAY_worker_niceness": "0"}}

LOGGED_LOSSES = ("loss_ce", "loss_bbox", "loss_giou", "class_error", "cardinality_error")

# Hyper-parameters of presets trained from scratch, where they differ from the paper's
# (TrainConfig's defaults, made for a pretrained backbone). Measured with bench/learning.py;
# see bench/README.md, `learning`. Flags given explicitly win.
RECIPES: dict[str, dict[str, Any]] = {
    "detr-tiny": {"lr": 3e-4, "lr_backbone": 3e-4, "warmup_steps": 200, "encoder_matches": 4, "batch_size": 8},
}


@dataclass
class TrainConfig:
    annotations: str
    images: str
    storage: str
    name: str
    val_annotations: str | None = None
    val_images: str | None = None
    preset: str = "detr-tiny"
    model_overrides: dict[str, Any] = field(default_factory=dict)  # DetrConfig fields
    init: str | None = None  # checkpoint to fine-tune from (any load_checkpoint source)
    backbone_weights: str | None = None  # torchvision ResNet state_dict (ImageNet), path or s3://
    from_scratch: bool = False  # a paper preset without pretrained weights, deliberately
    epochs: int = 10
    batch_size: int = 4  # per worker
    workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    placement: str = "PACK"  # of the workers over nodes: PACK, SPREAD or STRICT_SPREAD (one per node)
    data_cpus: float = 0.5  # per Ray Data decode/augment task
    lr: float = 1e-4
    lr_backbone: float = 1e-5
    weight_decay: float = 1e-4
    clip_max_norm: float = 0.1
    lr_drop: int = 200  # epochs between learning-rate drops
    lr_drop_gamma: float = 0.1
    warmup_steps: int = 0  # linear learning-rate warm-up from 0 over the first optimizer steps
    eos_coef: float = 0.1
    encoder_matches: int = 1  # two-stage presets: proposals matched to each object (one-to-many)
    augment_scale: float = 1.0  # multiplies the paper's image sizes (480-800, max 1333)
    eval_every: int = 1
    eval_backend: str = DEFAULT_BACKEND  # COCO scorer of the validation passes (pipeline/evaluation.py)
    log_every: int = 100  # steps between progress lines (and at least one a minute)
    resource_wait_s: float | None = None  # for an autoscaler to add nodes; default 600 with GPUs, else 0
    max_failures: int = 0
    num_to_keep: int | None = 3  # the last checkpoints kept (None: all); the best is kept besides
    seed: int = 0

    @property
    def augment(self) -> AugmentConfig:
        return AugmentConfig().scaled(self.augment_scale)

    def contract(self, init: InputContract | None = None) -> InputContract:
        """The run's input contract: validation's sizes, the normalisation of the checkpoint it
        fine-tunes (`init`, when that records one), else ImageNet's."""
        base = init or InputContract()
        return dataclasses.replace(base, min_size=self.augment.val_size, max_size=self.augment.max_size)


def _build_model(cfg: TrainConfig, num_classes: int):
    if cfg.init:
        model, config = load_checkpoint(cfg.init, num_classes=num_classes, **cfg.model_overrides)
        return model.train(), config
    config = get_config(cfg.preset, num_classes=num_classes, **cfg.model_overrides)
    return build_detr(config, backbone_weights=cfg.backbone_weights).train(), config


def _param_groups(model: torch.nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Two learning rates, as the paper: the backbone's and the rest's."""
    backbone, rest = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (backbone if name.startswith("backbone.") else rest).append(parameter)
    return [{"params": rest, "lr": cfg.lr}, {"params": backbone, "lr": cfg.lr_backbone}]


def warm_up(optimizer: torch.optim.Optimizer, step: int, warmup_steps: int) -> None:
    """Linear warm-up: step i (from 0) of the first warmup_steps runs at (i + 1) / warmup_steps
    of each group's initial learning rate (StepLR's drops come later, per epoch)."""
    if step < warmup_steps:
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * (step + 1) / warmup_steps


def _restore(model, optimizer, scheduler) -> tuple[int, int, float]:
    """Load the latest reported checkpoint, if any; return (completed epochs, optimizer steps,
    best validation AP so far)."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0, 0, -math.inf
    with checkpoint.as_directory() as folder:
        with open(os.path.join(folder, CHECKPOINT_FILE), "rb") as f:
            payload = safe_torch_load(f.read(), checkpoint.path)
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["extra"]["scheduler"])
    return payload["epoch"], payload["extra"]["steps"], payload["extra"].get("best_AP", -math.inf)


def detect_images(model, records: list[dict[str, Any]], contract: InputContract, batch_size: int,
                  score_threshold: float = SCORE_THRESHOLD) -> pa.Table:
    """Predictions rows of the images of `records` (path, image_id), made as bulk detection makes
    them: the same read stage, decoder, canvases, batching and post-processing (pipeline/detector.py),
    window by window. A row that is an error (an unreadable image) is a ValueError naming it."""
    detector = Detector.of_model(model, contract, score_threshold, batch_size, model_id="validation")
    window = 32 * batch_size  # as an actor's window
    tables = []
    for start in range(0, len(records), window):
        chunk = records[start:start + window]
        rows = fetch(pa.table({"path": pa.array([r["path"] for r in chunk], pa.large_string()),
                               "image_id": pa.array([r["image_id"] for r in chunk], pa.int64()),
                               "shard": pa.array([0] * len(chunk), pa.int32())}), contract, MAX_PIXELS)
        table = detector(rows).select(predictions.SCHEMA.names)
        failed = table.filter(pc.invert(pc.is_null(table["error"])))
        if failed.num_rows:
            raise ValueError(f"validation image {failed['path'][0]}: {failed['error'][0]}")
        tables.append(table)
    return pa.concat_tables(tables) if tables else predictions.SCHEMA.empty_table()


def validate(model, records: list[dict[str, Any]], cfg: TrainConfig, contract: InputContract,
             scorer: CocoScorer | None, rank: int, world_size: int) -> dict[str, float]:
    """Every worker detects its share of the validation images (every world_size-th); rank 0
    gathers the rows and returns their COCO stats (the others an empty dict). Each image's
    detections depend on it alone (its canvas), so the stats are those of one worker, and of
    jobs/detect.py then jobs/evaluate.py with the same checkpoint."""
    was_training = model.training
    table = detect_images(model.eval(), records[rank::world_size], contract, cfg.batch_size)
    model.train(was_training)
    tables = gather(table, world_size)
    return evaluate_predictions(tables, scorer)["metrics"] if rank == 0 else {}


def gather(table: pa.Table, world_size: int) -> list[pa.Table]:
    """Every worker's table, on every worker."""
    if world_size == 1:
        return [table]
    tables: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(tables, table)
    return tables


def train_step(ddp_model: torch.nn.Module, criterion, optimizer: torch.optim.Optimizer,
               batch: tuple[torch.Tensor, torch.Tensor, list[dict[str, torch.Tensor]]], cfg: TrainConfig,
               steps: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimizer step on a collated batch (gradients averaged over the data-parallel
    workers by DistributedDataParallel); returns the total loss and its terms."""
    images, mask, targets = batch
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=images.device.type == "cuda"):
        outputs = ddp_model(images, mask)
    losses = criterion(outputs, targets)  # float32: heads and criterion (model/precision.py)
    loss = criterion.total_loss(losses)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.clip_max_norm > 0:
        torch.nn.utils.clip_grad_norm_(ddp_model.parameters(), cfg.clip_max_norm)
    warm_up(optimizer, steps, cfg.warmup_steps)
    optimizer.step()
    return loss, losses


def train_loop(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    cfg = TrainConfig(**loop_config["train"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed)

    model, config = _build_model(cfg, loop_config["num_classes"])
    contract = model.contract = cfg.contract(model.contract)  # recorded by every checkpoint
    model.to(device)  # before the optimizer state is restored, so that state lands on the device too
    criterion = build_criterion(config.num_classes, config.dec_layers, eos_coef=cfg.eos_coef,
                                aux_loss=config.aux_loss, two_stage=config.two_stage,
                                encoder_matches=cfg.encoder_matches).to(device)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, cfg.lr_drop, cfg.lr_drop_gamma)
    start_epoch, steps, best_ap = _restore(model, optimizer, scheduler)
    ddp_model = ray.train.torch.prepare_model(model)

    data = ray.data.DataContext.get_current()
    data.execution_options.preserve_order = True  # the epoch's permutation is the order trained
    data.enable_progress_bars = data.print_on_execution_start = False  # a stream per epoch: no banners
    records = ray.get(loop_config["train_records"]) if "train_records" in loop_config else None
    val_records = ray.get(loop_config["val_records"]) if cfg.val_annotations else None
    scorer = (CocoScorer(load_coco(cfg.val_annotations, cfg.val_images, check_files=False).raw, cfg.eval_backend)
              if cfg.val_annotations and rank == 0 else None)
    last_eval: dict[str, float] = {}
    steps_per_epoch = -(-(loop_config["train_images"] // world_size) // cfg.batch_size)

    for epoch in range(start_epoch, cfg.epochs):
        progress = StepProgress(epoch + 1, cfg.epochs, steps_per_epoch, cfg.log_every) if rank == 0 else None
        sums: dict[str, float] = defaultdict(float)
        batches = images_seen = 0
        data_seconds = 0.0  # blocked waiting for the next batch: input-bound when large
        started = waited = time.perf_counter()
        cpu0 = time.thread_time()
        for batch in _epoch_batches(cfg, records, epoch, rank, world_size):
            data_seconds += time.perf_counter() - waited
            images, mask, targets = collate(batch, device, contract.image_mean, contract.image_std)
            loss, losses = train_step(ddp_model, criterion, optimizer, (images, mask, targets), cfg, steps)
            steps += 1
            batches += 1
            images_seen += len(images)
            sums["loss"] += loss.item()
            for name in LOGGED_LOSSES:
                sums[name] += losses[name].item()
            line = progress and progress.line(batches, sums["loss"] / batches, images_seen * world_size)
            if line:
                print(line, flush=True)
            waited = time.perf_counter()
        scheduler.step()
        elapsed = time.perf_counter() - started
        if progress is not None and progress.records:  # the progress lines, kept with the run
            lines = "".join(json.dumps(r) + "\n" for r in progress.records)
            uris.write_bytes(uris.join(_storage(cfg.storage), cfg.name, "progress", f"epoch_{epoch + 1:04d}.jsonl"),
                             lines.encode())
        metrics: dict[str, Any] = {k: v / max(batches, 1) for k, v in sums.items()}
        metrics.update(epoch=epoch + 1, steps=steps, lr=optimizer.param_groups[0]["lr"],
                       images_per_s=images_seen * world_size / max(elapsed, 1e-9), epoch_seconds=elapsed,
                       data_seconds=data_seconds, cpu_seconds=time.thread_time() - cpu0)
        if val_records is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
            last_eval = validate(model, val_records, cfg, contract, scorer, rank, world_size)
        metrics.update(last_eval)
        improved = metrics.get("AP", -math.inf) > best_ap
        best_ap = max(best_ap, metrics.get("AP", -math.inf))
        _report(metrics, model, config, optimizer, scheduler, epoch + 1, (steps, best_ap),
                best_uri(cfg) if improved else None, rank)


def _epoch_batches(cfg: TrainConfig, records: list[dict[str, Any]] | None, epoch: int, rank: int,
                   world_size: int) -> Iterable[dict[str, Any]]:
    """The worker's training batches of an epoch: its share of the epoch's permutation,
    streamed through Ray Data; or, for a prepared dataset given to fit, its shard of that."""
    if records is None:
        return ray.train.get_dataset_shard("train").iter_batches(
            batch_size=cfg.batch_size, batch_format="numpy", prefetch_batches=2,
            local_shuffle_buffer_size=shuffle_buffer(cfg.batch_size))
    share = worker_share(epoch_order(len(records), cfg.seed, epoch), rank, world_size)
    stream = sample_stream([records[i] for i in share], cfg.augment, num_cpus=cfg.data_cpus)
    return stream.iter_batches(batch_size=cfg.batch_size, batch_format="numpy", prefetch_batches=2)


def _report(metrics, model, config, optimizer, scheduler, epoch: int, progress: tuple[int, float],
            best: str | None, rank: int) -> None:
    """Every worker reports; rank 0 attaches the checkpoint and, when validation AP improved,
    also writes it to best (outside Ray's retention, which keeps the last --keep)."""
    if rank != 0:
        ray.train.report(metrics)
        return
    shown = " ".join(f"{k} {metrics[k]:.4g}" for k in ("loss", "loss_ce", "loss_bbox", "loss_giou", "AP", "AP50",
                                                          "images_per_s", "data_seconds") if k in metrics)
    print(f"epoch {epoch}: {shown}", flush=True)
    steps, best_ap = progress
    with tempfile.TemporaryDirectory() as folder:
        save_checkpoint(folder, model, config, optimizer=optimizer, epoch=epoch,
                        extra={"scheduler": scheduler.state_dict(), "steps": steps, "best_AP": best_ap,
                               "metrics": metrics})
        if best is not None:
            with open(os.path.join(folder, CHECKPOINT_FILE), "rb") as f:
                uris.write_bytes(best, f.read())
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def checkpoint_uri(checkpoint: ray.train.Checkpoint) -> str:
    """The checkpoint file as a URI that load_checkpoint accepts."""
    path = f"{checkpoint.path.rstrip('/')}/{CHECKPOINT_FILE}"
    return f"s3://{path}" if isinstance(checkpoint.filesystem, pafs.S3FileSystem) else path


def _storage(uri: str) -> str:
    return uri if "://" in uri else os.path.abspath(uri)


def best_uri(cfg: TrainConfig) -> str:
    """Where the checkpoint with the best validation AP so far is kept, beside Ray's."""
    return uris.join(_storage(cfg.storage), cfg.name, "best", CHECKPOINT_FILE)


def _run_config(cfg: TrainConfig) -> ray.train.RunConfig:
    """Where the run lives, how often it may restart, which checkpoints it keeps: the last
    num_to_keep (ranked by epoch; Ray also never deletes the latest), all when None."""
    return ray.train.RunConfig(
        name=cfg.name,
        storage_path=_storage(cfg.storage),
        worker_runtime_env=WORKER_RUNTIME_ENV,
        failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(
            num_to_keep=cfg.num_to_keep, checkpoint_score_attribute="epoch", checkpoint_score_order="max"
        ),
    )


def _records(cfg: TrainConfig, train_set: CocoDataset, prepared: bool) -> dict[str, ray.ObjectRef]:
    """The annotation records the workers read from the object store: the training ones (unless
    a prepared dataset replaces them) and the validation ones."""
    refs = {} if prepared else {"train_records": ray.put(records_of(train_set))}
    if cfg.val_annotations:
        refs["val_records"] = ray.put(records_of(load_coco(cfg.val_annotations, cfg.val_images)))
    return refs


def check_initialisation(cfg: TrainConfig) -> None:
    """A paper preset learns from a pretrained backbone (its frozen BatchNorm keeps ImageNet's
    statistics): refuse to start one from random weights unless asked to."""
    if cfg.init and cfg.backbone_weights:
        raise ValueError("--init and --backbone-weights both set the backbone's weights: give one")
    if cfg.backbone_weights:
        if get_config(cfg.preset, **cfg.model_overrides).backbone == "small_cnn":
            raise ValueError(f"--backbone-weights: {cfg.preset}'s small_cnn backbone has no pretrained weights")
        if uris.file_type(cfg.backbone_weights) != pafs.FileType.File:
            raise ValueError(f"--backbone-weights {cfg.backbone_weights}: no such file")
    paper = get_config(cfg.preset).backbone_norm == "frozen_bn"
    if paper and not (cfg.init or cfg.backbone_weights or cfg.from_scratch):
        raise ValueError(f"{cfg.preset} starts from an ImageNet backbone: give --backbone-weights FILE (a "
                         "torchvision ResNet state_dict, see docs/training.md) or --init CHECKPOINT, or "
                         "--from-scratch to train it from random weights deliberately")


def check_fit(cfg: TrainConfig) -> None:
    """Stop at once, saying what is short, when the workers plus one decode/augment task cannot
    all run on the cluster: Ray would start the workers and wait for the data tasks forever."""
    need = {"CPU": cfg.workers * cfg.cpus_per_worker + cfg.data_cpus}
    if cfg.use_gpu:
        need["GPU"] = float(cfg.workers)
    wait_s = cfg.resource_wait_s if cfg.resource_wait_s is not None else (600.0 if cfg.use_gpu else 0.0)
    wait_for(need, wait_s, f"{cfg.workers} training workers of {cfg.cpus_per_worker:g} CPU"
             + (" and 1 GPU" if cfg.use_gpu else "") + f" plus one decode/augment task of {cfg.data_cpus:g} CPU",
             "Use fewer --workers, a smaller --cpus-per-worker or --data-cpus, a larger cluster, or "
             "--resource-wait SECONDS for an autoscaler to add nodes")


def fit(
    cfg: TrainConfig, datasets: dict[str, ray.data.Dataset] | None = None
) -> tuple[ray.train.Result, CocoDataset]:
    """Validate the data and train on the current Ray cluster. Returns Ray's Result (its
    metrics_dataframe: one row per kept checkpoint, i.e. per epoch) and the training set.
    `datasets` ({"train": samples}) replaces the workers' per-epoch streams, e.g. with samples
    decoded once and materialised (split between the workers by Ray Train)."""
    if cfg.val_annotations and not cfg.val_images:
        raise ValueError("--val-annotations needs --val-images")
    check_initialisation(cfg)
    ray.data.DataContext.get_current().enable_progress_bars = False  # one line per epoch instead
    train_set = load_coco(cfg.annotations, cfg.images)
    check_fit(cfg)
    trainer = ray.train.torch.TorchTrainer(
        train_loop,
        train_loop_config={"train": dataclasses.asdict(cfg), "num_classes": train_set.num_classes,
                           "train_images": len(train_set.images), **_records(cfg, train_set, bool(datasets))},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.workers, use_gpu=cfg.use_gpu, resources_per_worker={"CPU": cfg.cpus_per_worker},
            placement_strategy=cfg.placement,
        ),
        run_config=_run_config(cfg),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]) if datasets else None,
    )
    return trainer.fit(), train_set


def learning_rate_line(cfg: TrainConfig) -> str:
    """The learning rates used and the rule behind them: as given, whatever the total batch
    (the paper's recipe is lr 1e-4 at a total batch of 64; the job does not rescale it)."""
    total = cfg.workers * cfg.batch_size
    return (f"training {cfg.init or cfg.preset}: {cfg.workers} worker(s) x batch {cfg.batch_size} = total batch "
            f"{total}; lr {cfg.lr:g}, backbone lr {cfg.lr_backbone:g}, as given (not scaled with the total batch; "
            "the paper's recipe: 1e-4 / 1e-5 at total batch 64)")


def run_training(cfg: TrainConfig) -> dict[str, Any]:
    """Train (see fit) and summarise the run: path, last and best checkpoint, final metrics."""
    print(learning_rate_line(cfg), flush=True)
    result, train_set = fit(cfg)
    summary: dict[str, Any] = {
        "run": result.path,
        "checkpoint": checkpoint_uri(result.checkpoint) if result.checkpoint else None,
        "best_checkpoint": None,
        "metrics": result.metrics,
        "num_classes": train_set.num_classes,
        "dropped_boxes": train_set.dropped_boxes,
    }
    if cfg.val_annotations and uris.file_type(best_uri(cfg)) == pafs.FileType.File:
        summary["best_checkpoint"] = best_uri(cfg)
    return summary
