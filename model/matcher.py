"""Hungarian matching between predicted and ground-truth boxes."""
from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou

from .precision import upcast

PADDING_COST = 1e6  # far above any real cost (|L1| <= 4, |GIoU| <= 1, p <= 1 per term)


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to targets minimising
    cost_class * (-p(class)) + cost_bbox * L1(boxes) + cost_giou * (-GIoU(boxes)).

    targets: one dict per image with "labels" [T] and "boxes" [T,4] normalised cxcywh.
    outputs may hold "padding" [B,Q] (True = a query on padding, e.g. an encoder token): never matched.
    Returns, per image, (query indices, target indices) as int64 tensors.
    """

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0):
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("all matcher costs are 0")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        prob = upcast(outputs["pred_logits"]).softmax(-1)  # [B,Q,C+1]
        pred_boxes = upcast(outputs["pred_boxes"])
        padding = outputs.get("padding", torch.zeros(prob.shape[:2], dtype=torch.bool, device=prob.device))
        indices = []
        for image_prob, image_boxes, image_padding, target in zip(prob, pred_boxes, padding, targets):
            labels, boxes = target["labels"], target["boxes"].to(pred_boxes.dtype)
            if len(labels) == 0:
                empty = torch.empty(0, dtype=torch.int64)
                indices.append((empty, empty.clone()))
                continue
            cost = (
                self.cost_bbox * torch.cdist(image_boxes, boxes, p=1)
                - self.cost_class * image_prob[:, labels]
                - self.cost_giou
                * generalized_box_iou(box_convert(image_boxes, "cxcywh", "xyxy"), box_convert(boxes, "cxcywh", "xyxy"))
            )
            cost[image_padding] = PADDING_COST
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices

