"""One optimizer step of training, and the learning rates it takes: torch only (no Ray), so
that a benchmark on a machine without Ray times exactly what a training worker runs."""
from __future__ import annotations

from typing import Any

import torch

from model.criterion import SetCriterion

from .config import TrainConfig


def param_groups(model: torch.nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Two learning rates, as the paper: the backbone's and the rest's (a model with the mask head
    holds its DETR under `detr.`)."""
    backbone: list[torch.nn.Parameter] = []
    rest: list[torch.nn.Parameter] = []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:  # DETR's backbone.*, detr.backbone.*; a family's model.model.backbone.*
            (backbone if "backbone" in name.split(".") else rest).append(parameter)
    return [{"params": rest, "lr": cfg.lr}, {"params": backbone, "lr": cfg.lr_backbone}]


def train_step(ddp_model: torch.nn.Module, criterion: SetCriterion | None, optimizer: torch.optim.Optimizer,
               batch: tuple[torch.Tensor, torch.Tensor, list[dict[str, torch.Tensor]]], cfg: TrainConfig,
               steps: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """One optimizer step on a collated batch (gradients averaged over the data-parallel
    workers by DistributedDataParallel); returns the total loss, its terms and the gradients'
    norm before clipping (tensors on the device: reading them is the caller's one sync).
    criterion None: a transformers family's model, which computes its own loss from the targets
    in forward (its denoising queries are made from them), in float32 and normalised across
    ranks (model/transformers_detector.py)."""
    images, mask, targets = batch
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=images.device.type == "cuda"):
        outputs = ddp_model(images, mask) if criterion is not None else ddp_model(images, mask, targets)
    if criterion is not None:
        losses = criterion(outputs, targets)  # float32: heads and criterion (model/precision.py)
        loss = criterion.total_loss(losses)
    else:
        losses = dict(outputs)
        loss = losses.pop("loss")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.clip_max_norm > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(ddp_model.parameters(), cfg.clip_max_norm)
    else:
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in ddp_model.parameters() if p.grad is not None])
    warm_up(optimizer, steps, cfg.warmup_steps)
    optimizer.step()
    return loss, losses, grad_norm


def warm_up(optimizer: torch.optim.Optimizer, step: int, warmup_steps: int) -> None:
    """Linear warm-up: step i (from 0) of the first warmup_steps runs at (i + 1) / warmup_steps
    of each group's initial learning rate (StepLR's drops come later, per epoch)."""
    if step < warmup_steps:
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * (step + 1) / warmup_steps
