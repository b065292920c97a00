"""The mask head's losses (the reference's loss_masks): sigmoid focal and DICE between each
matched query's mask logits, upsampled to the padded batch's size, and its object's mask."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from .precision import upcast


def dice_loss(inputs: torch.Tensor, targets: torch.Tensor, num_boxes: float) -> torch.Tensor:
    """inputs: mask logits [N, pixels]; targets: 0/1 of the same shape; 1 - smoothed DICE, summed."""
    inputs = inputs.sigmoid()
    numerator = 2 * (inputs * targets).sum(1)
    denominator = inputs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_boxes


def padded_masks(targets: list[dict], device: torch.device) -> torch.Tensor:
    """Every object's mask [H,W] (at its image's size) zero-padded bottom/right to the batch's
    largest image, as the image itself is: [objects of all images, H, W], in the targets' order."""
    height = max(t["masks"].shape[-2] for t in targets)
    width = max(t["masks"].shape[-1] for t in targets)
    return torch.cat([F.pad(t["masks"].to(device, torch.float32),
                            (0, width - t["masks"].shape[-1], 0, height - t["masks"].shape[-2])) for t in targets])


def mask_losses(pred_masks: torch.Tensor, targets: list[dict], indices: list[tuple[torch.Tensor, torch.Tensor]],
                num_boxes: float) -> dict[str, torch.Tensor]:
    """loss_mask (sigmoid focal, alpha 0.25, gamma 2, mean over pixels) and loss_dice of the
    matched (query, object) pairs; pred_masks [B,Q,h,w] logits, each target's "masks" [n,H,W]."""
    batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    query_idx = torch.cat([src for src, _ in indices])
    first = torch.tensor([0] + [len(t["masks"]) for t in targets[:-1]]).cumsum(0)  # each image's first object
    object_idx = torch.cat([tgt + first[i] for i, (_, tgt) in enumerate(indices)])
    target = padded_masks(targets, pred_masks.device)
    source = F.interpolate(upcast(pred_masks[batch_idx, query_idx])[:, None], size=target.shape[-2:],
                           mode="bilinear", align_corners=False)[:, 0].flatten(1)
    target = target[object_idx.to(target.device)].flatten(1)
    focal = sigmoid_focal_loss(source, target, alpha=0.25, gamma=2, reduction="none")
    return {"loss_mask": focal.mean(1).sum() / num_boxes, "loss_dice": dice_loss(source, target, num_boxes)}
