"""DETR's set-prediction loss: Hungarian matching, then class, L1 and GIoU losses (and, with a
mask head, the mask losses of the final layer: model/mask_loss.py)."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou

from .mask_loss import mask_losses
from .matcher import HungarianMatcher
from .precision import upcast


def default_weight_dict(
    num_decoder_layers: int, ce: float = 1.0, bbox: float = 5.0, giou: float = 2.0, encoder: bool = False,
    masks: bool = False,
) -> dict[str, float]:
    """Loss weights for the final layer, every auxiliary decoder layer (suffix _i) and,
    for two-stage models, the encoder's proposals (suffix _enc); with masks, the final layer's
    mask losses (focal 1, DICE 1: the reference's; it computes them for no other layer)."""
    weights = {"loss_ce": ce, "loss_bbox": bbox, "loss_giou": giou}
    final = list(weights.items())
    for i in range(num_decoder_layers - 1):
        weights.update({f"{k}_{i}": v for k, v in final})
    if encoder:
        weights.update({f"{k}_enc": v for k, v in final})
    if masks:
        weights.update({"loss_mask": 1.0, "loss_dice": 1.0})
    return weights


class SetCriterion(nn.Module):
    """Losses of matched predictions; unmatched queries learn the "no object" class.

    Returns a dict: loss_ce, loss_bbox, loss_giou (weighted by weight_dict in the total),
    class_error and cardinality_error (logged only), the same losses with suffix _i
    for every auxiliary decoder output i, and with suffix _enc for the encoder's proposals.
    """

    empty_weight: torch.Tensor  # a buffer: the classes' weights, "no object" eos_coef

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        weight_dict: dict[str, float],
        eos_coef: float = 0.1,
        encoder_matches: int = 1,
    ):
        super().__init__()
        self.encoder_matches = encoder_matches
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = weight_dict
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)

    def total_loss(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.stack([losses[k] * w for k, w in self.weight_dict.items() if k in losses]).sum()

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, torch.Tensor]:
        num_boxes = self._num_boxes(targets, outputs["pred_logits"].device)
        losses = self._losses(outputs, targets, num_boxes, log=True)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            aux_losses = self._losses(aux, targets, num_boxes, log=False)
            losses.update({f"{k}_{i}": v for k, v in aux_losses.items()})
        if "enc_outputs" in outputs:
            matches = self.encoder_matches  # one-to-many: each object matched to that many proposals
            repeated = [{"labels": t["labels"].repeat(matches), "boxes": t["boxes"].repeat(matches, 1)}
                        for t in targets]
            enc_losses = self._losses(outputs["enc_outputs"], repeated, num_boxes * matches, log=False)
            losses.update({f"{k}_enc": v for k, v in enc_losses.items()})
        return losses

    @staticmethod
    def _num_boxes(targets: list[dict], device: torch.device) -> float:
        """Average number of target boxes per process, so every rank's loss has the same scale."""
        num_boxes = torch.tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
        return max(SetCriterion._mean_over_ranks(num_boxes), 1.0)

    @staticmethod
    def _mean_over_ranks(value: torch.Tensor) -> float:
        """The mean of a scalar over the data-parallel ranks (itself in one process)."""
        value = value.detach().reshape(1).double()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(value)
            value /= dist.get_world_size()
        return value.item()

    def _losses(self, outputs: dict, targets: list[dict], num_boxes: float, log: bool) -> dict[str, torch.Tensor]:
        indices = self.matcher(outputs, targets)
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        query_idx = torch.cat([src for src, _ in indices])
        logits = outputs["pred_logits"]
        device = logits.device

        matched_labels = torch.cat([t["labels"][tgt] for t, (_, tgt) in zip(targets, indices)]).to(device)
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=device)
        target_classes[batch_idx, query_idx] = matched_labels
        # The reference's weighted mean, with the weights' sum averaged over data-parallel ranks
        # (as num_boxes is): the same value in one process, and N workers of batch b then train
        # exactly as one of batch N x b, whatever each rank's number of objects.
        scores = upcast(logits)
        weight = self.empty_weight.to(scores.dtype)
        weight_sum = self._mean_over_ranks(weight[target_classes].sum())
        ce = F.cross_entropy(scores.transpose(1, 2), target_classes, weight, reduction="sum")
        losses = {"loss_ce": ce / weight_sum}
        if log:
            losses["class_error"] = self._class_error(logits[batch_idx, query_idx], matched_labels)

        pred_boxes = upcast(outputs["pred_boxes"][batch_idx, query_idx])
        target_boxes = torch.cat([t["boxes"][tgt] for t, (_, tgt) in zip(targets, indices)]).to(device, pred_boxes.dtype)
        losses["loss_bbox"] = F.l1_loss(pred_boxes, target_boxes, reduction="none").sum() / num_boxes
        giou = torch.diag(
            generalized_box_iou(box_convert(pred_boxes, "cxcywh", "xyxy"), box_convert(target_boxes, "cxcywh", "xyxy"))
        )
        losses["loss_giou"] = (1 - giou).sum() / num_boxes
        losses["cardinality_error"] = self._cardinality_error(logits, targets)
        if log and "pred_masks" in outputs:  # the final layer's only, as the reference
            losses.update(mask_losses(outputs["pred_masks"], targets, indices, num_boxes))
        return losses

    @staticmethod
    @torch.no_grad()
    def _class_error(matched_logits: torch.Tensor, matched_labels: torch.Tensor) -> torch.Tensor:
        """Percentage of matched queries whose best logit is not their target class."""
        if matched_labels.numel() == 0:
            return torch.zeros((), device=matched_logits.device)
        accuracy = (matched_logits.argmax(-1) == matched_labels).float().mean() * 100
        return 100 - accuracy

    @staticmethod
    @torch.no_grad()
    def _cardinality_error(logits: torch.Tensor, targets: list[dict]) -> torch.Tensor:
        """L1 error between the number of non-"no object" predictions and of targets."""
        predicted = (logits.argmax(-1) != logits.shape[-1] - 1).sum(1).float()
        expected = torch.tensor([float(len(t["labels"])) for t in targets], device=logits.device)
        return F.l1_loss(predicted, expected)


def build_criterion(
    num_classes: int,
    num_decoder_layers: int,
    cost_class: float = 1.0,
    cost_bbox: float = 5.0,
    cost_giou: float = 2.0,
    ce_weight: float = 1.0,
    bbox_weight: float = 5.0,
    giou_weight: float = 2.0,
    eos_coef: float = 0.1,
    aux_loss: bool = True,
    two_stage: bool = False,
    encoder_matches: int = 1,
    masks: bool = False,
) -> SetCriterion:
    """The paper's loss: matcher costs class 1 / L1 5 / GIoU 2 and, set apart as the reference
    does, loss weights CE 1 / L1 5 / GIoU 2; no-object weight 0.1; two_stage adds the same
    loss on the encoder's proposals; masks adds the mask head's losses."""
    weight_dict = default_weight_dict(num_decoder_layers if aux_loss else 1, ce_weight, bbox_weight, giou_weight,
                                      encoder=two_stage, masks=masks)
    return SetCriterion(num_classes, HungarianMatcher(cost_class, cost_bbox, cost_giou), weight_dict, eos_coef,
                        encoder_matches)
