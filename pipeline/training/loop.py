"""The training loop on every Ray Train worker: build, restore, then train, validate and report
each epoch.

Each epoch every worker streams its share of a fresh permutation of the training set and steps
AdamW; every eval_every epochs (and the last) the workers validate (training/validation.py);
rank 0 attaches a checkpoint with the losses and, from the epochs that validated, the COCO stats.
A checkpoint holds what resuming needs (RunState); after a worker failure Ray restarts the group
and training continues from the latest one. Rank 0 also keeps the run watchable (watch.py):
progress files, TensorBoard's event files, curves.png and, when asked, MLflow.
"""
from __future__ import annotations

import math
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch

import storage as uris
from model.checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from model.config import DetrConfig, get_config
from model.contract import InputContract
from model.criterion import SetCriterion, build_criterion
from model.families import FamilyConfig
from model.interface import build_model as build_network
from model.interface import preset_config, preset_contract
from model.network import DetectionNetwork
from model.safe_load import safe_torch_load
from model.segmentation import DETRsegm, build_detr

from ..coco import load_coco
from ..evaluation.scoring import CocoScorer
from ..progress import StepProgress
from .config import LoopInputs, TrainConfig
from .step import param_groups, train_step
from .stream import collate, epoch_order, sample_stream, worker_share
from .validation import validate
from .watch import RunLog

LOGGED_LOSSES = ("loss_ce", "loss_bbox", "loss_giou", "class_error", "cardinality_error",
                 "loss_vfl", "loss_fgl", "loss_ddf")  # the last three: the families' (RT-DETR, D-FINE)
MASK_LOSSES = ("loss_mask", "loss_dice")  # with the mask head


@dataclass
class RunState:
    """What a checkpoint holds for resuming, besides the weights and AdamW's state."""
    epoch: int = 0  # epochs completed
    steps: int = 0  # optimizer steps taken (the warm-up counts them)
    best_ap: float = -math.inf  # the best validation AP so far
    scheduler: dict[str, Any] | None = None  # StepLR's state

    def to_extra(self) -> dict[str, Any]:
        return {"scheduler": self.scheduler, "steps": self.steps, "best_AP": self.best_ap}

    @classmethod
    def of_payload(cls, payload: dict[str, Any]) -> RunState:
        extra = payload["extra"]
        return cls(payload["epoch"], extra["steps"], extra.get("best_AP", -math.inf), extra["scheduler"])


@dataclass
class Worker:
    """One worker's model, loss, optimizer and where it stands."""
    config: TrainConfig
    rank: int
    world_size: int
    device: torch.device
    model: DetectionNetwork  # DETR, DETRsegm or a family's TransformersDetector (model/interface.py)
    ddp_model: torch.nn.Module
    criterion: SetCriterion | None  # None: a family's model computes its own loss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.StepLR
    contract: InputContract
    state: RunState
    log: RunLog | None  # rank 0's


def run_loop(inputs: LoopInputs) -> None:
    """Runs on every Ray Train worker (entry.train_loop)."""
    cfg = inputs.config
    worker = start_worker(inputs)
    records = ray.get(inputs.train_records)
    val_records = ray.get(inputs.val_records) if inputs.val_records is not None else None
    scorer = (CocoScorer(load_coco(cfg.val_annotations or "", cfg.val_images or "", check_files=False).raw,
                         cfg.eval_backend) if val_records is not None and worker.rank == 0 else None)
    if worker.state.epoch >= cfg.epochs and worker.rank == 0:
        print(f"already at epoch {worker.state.epoch}/{cfg.epochs}: nothing to train (a larger --epochs trains on)",
              flush=True)
    for epoch in range(worker.state.epoch, cfg.epochs):
        batches = epoch_batches(cfg, records, epoch, worker.rank, worker.world_size)
        metrics, steps = train_epoch(worker, batches, epoch, inputs.train_images)
        if val_records is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
            metrics.update(validate(worker.model, val_records, worker.contract, cfg.batch_size, scorer,
                                    worker.rank, worker.world_size))
        report(worker, metrics, steps, inputs)


def start_worker(inputs: LoopInputs) -> Worker:
    """The worker's model (with the run's input contract), loss and optimizer, restored from the
    latest checkpoint when there is one, and Ray Data set to stream the epochs in order."""
    cfg = inputs.config
    context = ray.train.get_context()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, inputs.num_classes, inputs.stuff_classes)
    contract = cfg.contract(model.contract)
    model.contract = contract  # recorded by every checkpoint
    model.to(device)  # before the optimizer state is restored, so that state lands on the device too
    config = model.config
    family = isinstance(config, FamilyConfig)
    criterion = build_criterion(
        config.num_classes, config.dec_layers, eos_coef=cfg.eos_coef, aux_loss=config.aux_loss,
        two_stage=config.two_stage, encoder_matches=cfg.encoder_matches, masks=config.masks,
    ).to(device) if isinstance(config, DetrConfig) else None
    optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, cfg.lr_drop, cfg.lr_drop_gamma)
    state = restore(model, optimizer, scheduler)
    data = ray.data.DataContext.get_current()
    data.execution_options.preserve_order = True  # the epoch's permutation is the order trained
    data.enable_progress_bars = data.print_on_execution_start = False  # a stream per epoch: no banners
    rank = context.get_world_rank()
    log = RunLog(inputs.run_folder, state.epoch, inputs.mlflow) if rank == 0 else None
    world_size = context.get_world_size()
    if family and world_size > 1 and device.type == "cuda":  # batch statistics over every rank's batch
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # A family's model may leave parameters without gradients in a step (RF-DETR's groups, D-FINE's
    # heads on the last layer): DDP must look for them rather than wait for their gradients.
    ddp_model = ray.train.torch.prepare_model(
        model, parallel_strategy_kwargs={"find_unused_parameters": True} if family else None)
    return Worker(cfg, rank, world_size, device, model, ddp_model, criterion, optimizer, scheduler, contract,
                  state, log)


def build_model(cfg: TrainConfig, num_classes: int, stuff_classes: tuple[int, ...] = ()) -> DetectionNetwork:
    """The network in training mode: the checkpoint fine-tuned, or the preset (a DETR one, or a
    family's, with its own input contract); with masks, with the mask head (a new one on a box
    checkpoint), its DETR frozen with freeze_detr. It records the data's stuff classes (panoptic
    output)."""
    overrides = {**cfg.model_overrides, "stuff_classes": stuff_classes, **({"masks": True} if cfg.masks else {})}
    if cfg.init:
        model, _ = load_checkpoint(cfg.init, num_classes=num_classes, **overrides)
        if isinstance(model.config, FamilyConfig) and model.config.masks and not cfg.masks:
            raise ValueError(f"{cfg.init} has a mask head: train it with --masks (its mask terms need the "
                             "annotations' segmentations)")
    elif preset_contract(cfg.preset) is not None:  # (--masks refused before the run: run.check_initialisation)
        model = build_network(preset_config(cfg.preset, num_classes, **cfg.model_overrides))
        model.contract = preset_contract(cfg.preset)
    else:
        model = build_detr(get_config(cfg.preset, num_classes=num_classes, **overrides),
                           backbone_weights=cfg.backbone_weights)
    if cfg.freeze_detr and isinstance(model, DETRsegm):  # (--freeze-detr needs --masks: run.check_initialisation)
        model.freeze_detr()
    return model.train()


def restore(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler) -> RunState:
    """Load the latest reported checkpoint into model, optimizer and scheduler, if there is one."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return RunState()
    with checkpoint.as_directory() as folder:
        with open(os.path.join(folder, CHECKPOINT_FILE), "rb") as f:
            payload = safe_torch_load(f.read(), checkpoint.path)
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    state = RunState.of_payload(payload)
    scheduler.load_state_dict(state.scheduler)
    return state


def epoch_batches(cfg: TrainConfig, records: list[dict[str, Any]], epoch: int, rank: int,
                  world_size: int) -> Iterable[dict[str, Any]]:
    """The worker's training batches of an epoch: its share of the epoch's permutation,
    streamed through Ray Data (read, decoded and augmented as it trains)."""
    share = worker_share(epoch_order(len(records), cfg.seed, epoch), rank, world_size)
    stream = sample_stream([records[i] for i in share], cfg.augment, num_cpus=cfg.data_cpus)
    return stream.iter_batches(batch_size=cfg.batch_size, batch_format="numpy", prefetch_batches=2)


def train_epoch(worker: Worker, batches: Iterable[dict[str, Any]], epoch: int,
                train_images: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One pass over the worker's batches; returns the epoch's mean losses and timings, and the
    progress lines rank 0 printed (a line every log_every steps and at least once a minute).
    Rank 0 logs every step's loss terms, learning rates and gradient norm (watch.py)."""
    cfg, world_size, log = worker.config, worker.world_size, worker.log
    steps_per_epoch = -(-(train_images // world_size) // cfg.batch_size)
    progress = StepProgress(epoch + 1, cfg.epochs, steps_per_epoch, cfg.log_every) if worker.rank == 0 else None
    sums: dict[str, float] = defaultdict(float)
    count = images_seen = 0
    data_seconds = 0.0  # blocked waiting for the next batch: input-bound when large
    started = waited = time.perf_counter()
    cpu0 = time.thread_time()
    if log:
        log.start_epoch(epoch + 1)
    for batch in batches:
        data_seconds += time.perf_counter() - waited
        collated = collate(batch, worker.device, worker.contract.image_mean, worker.contract.image_std,
                           worker.contract)
        scalars = step_scalars(*train_step(worker.ddp_model, worker.criterion, worker.optimizer, collated, cfg,
                                           worker.state.steps))
        worker.state.steps += 1
        count += 1
        images_seen += len(collated[0])
        for name in ("loss", *LOGGED_LOSSES, *MASK_LOSSES):
            if name in scalars:
                sums[name] += scalars[name]
        line = progress.line(count, sums["loss"] / count, images_seen * world_size) if progress else None
        if line:
            print(line, flush=True)
        if log:
            groups = worker.optimizer.param_groups
            scalars.update(lr=groups[0]["lr"], lr_backbone=groups[1]["lr"])
            if line and progress:
                scalars["images_per_s"] = progress.records[-1]["images_per_s"]
            log.step(worker.state.steps, scalars)
            if line:
                log.flush()
        waited = time.perf_counter()
    worker.scheduler.step()
    elapsed = time.perf_counter() - started
    worker.state.epoch = epoch + 1
    metrics = {**{k: v / max(count, 1) for k, v in sums.items()},
               "epoch": epoch + 1, "steps": worker.state.steps, "lr": worker.optimizer.param_groups[0]["lr"],
               "images_per_s": images_seen * world_size / max(elapsed, 1e-9), "epoch_seconds": elapsed,
               "data_seconds": data_seconds, "cpu_seconds": time.thread_time() - cpu0}
    return metrics, progress.records if progress is not None else []


def step_scalars(loss: torch.Tensor, losses: dict[str, torch.Tensor], grad_norm: torch.Tensor) -> dict[str, float]:
    """A step's loss, loss terms (final, auxiliary, encoder) and gradient norm, read from the
    device at once (one synchronisation, not one per term)."""
    names = sorted(losses)
    values = torch.stack([loss.detach().float(), grad_norm.detach().float(),
                          *(losses[name].detach().float() for name in names)]).tolist()
    return {"loss": values[0], "grad_norm": values[1], **dict(zip(names, values[2:]))}


def report(worker: Worker, metrics: dict[str, Any], steps: list[dict[str, Any]], inputs: LoopInputs) -> None:
    """Every worker reports the epoch's metrics (the COCO stats only in an epoch that validated);
    rank 0 prints them, records the epoch for the people watching (watch.py), attaches the
    checkpoint and, when validation AP improved, also writes it to RUN/best (outside Ray's
    retention, which keeps the last --keep). The records come first: a worker lost before the
    checkpoint trains the epoch again and rewrites them."""
    if worker.log is None:  # not rank 0
        ray.train.report(metrics)
        return
    state = worker.state
    improved = metrics.get("AP", -math.inf) > state.best_ap
    state.best_ap = max(state.best_ap, metrics.get("AP", -math.inf))
    state.scheduler = worker.scheduler.state_dict()
    shown = " ".join(f"{k} {metrics[k]:.4g}" for k in ("loss", "loss_ce", "loss_bbox", "loss_giou", "AP", "AP50",
                                                          "images_per_s", "data_seconds") if k in metrics)
    print(f"epoch {state.epoch}: {shown}" + ("" if "AP" in metrics else " (not validated this epoch)"), flush=True)
    worker.log.end_epoch(metrics, steps)
    with tempfile.TemporaryDirectory() as folder:
        save_checkpoint(folder, worker.model, optimizer=worker.optimizer, epoch=state.epoch,
                        extra={**state.to_extra(), "metrics": metrics})
        if improved:
            file = os.path.join(folder, CHECKPOINT_FILE)
            with open(file, "rb") as f:
                uris.write_bytes(inputs.best_checkpoint, f.read())
            worker.log.best(file)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
