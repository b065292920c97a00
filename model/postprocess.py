"""Turn DETR's outputs into scored, labelled boxes in each image's pixel coordinates."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import box_convert


class PostProcess(nn.Module):
    """Softmax over classes, drop "no object", keep each query's best class.

    target_sizes [B,2] holds each image's original (height, width): boxes come back as
    absolute xyxy in that image. With no threshold and no top_k every query is returned
    in query order (as the reference does); otherwise the kept ones, best score first.
    "queries" holds each result's query index (its mask, for a model with the mask head).
    """

    def __init__(self, score_threshold: float = 0.0, top_k: int | None = None):
        super().__init__()
        self.score_threshold = score_threshold
        self.top_k = top_k

    @torch.no_grad()
    def forward(self, outputs: dict, target_sizes: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        if len(logits) != len(target_sizes):
            raise ValueError(f"{len(logits)} predictions but {len(target_sizes)} target sizes")
        scores, labels = self.query_scores(logits)
        height, width = target_sizes.to(boxes.device, torch.float32).unbind(1)
        scale = torch.stack([width, height, width, height], dim=1)
        boxes = box_convert(boxes.float(), "cxcywh", "xyxy") * scale[:, None, :]
        return [self._select(s, c, b) for s, c, b in zip(scores, labels, boxes)]

    @staticmethod
    def query_scores(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each query's score and label [B,Q]: its best class other than "no object"."""
        return logits.float().softmax(-1)[..., :-1].max(-1)

    def _select(self, scores, labels, boxes) -> dict[str, torch.Tensor]:
        if self.score_threshold <= 0 and self.top_k is None:
            queries = torch.arange(len(scores), device=scores.device)
            return {"scores": scores, "labels": labels, "boxes": boxes, "queries": queries}
        order = scores.argsort(descending=True, stable=True)
        order = order[scores[order] >= self.score_threshold][: self.top_k]
        return {"scores": scores[order], "labels": labels[order], "boxes": boxes[order], "queries": order}


class TopKPostProcess(PostProcess):
    """The descendants' rule (RT-DETR, D-FINE, Deformable DETR, ...: transformers'
    post_process_object_detection with focal-loss scores): a sigmoid per class, no "no object"
    logit, and the top_k best (query, class) pairs of the image, so one query may give boxes of
    two classes. "queries" holds each result's query index."""

    @staticmethod
    def query_scores(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each query's best score and its class [B,Q] (which queries can give a box at all)."""
        return logits.float().sigmoid().max(-1)

    @torch.no_grad()
    def forward(self, outputs: dict, target_sizes: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        if len(logits) != len(target_sizes):
            raise ValueError(f"{len(logits)} predictions but {len(target_sizes)} target sizes")
        num_queries, num_classes = logits.shape[1:]
        top_k = min(self.top_k or num_queries, num_queries * num_classes)
        scores, index = logits.float().sigmoid().flatten(1).topk(top_k, dim=-1)
        labels, queries = index % num_classes, index // num_classes
        height, width = target_sizes.to(boxes.device, torch.float32).unbind(1)
        scale = torch.stack([width, height, width, height], dim=1)
        boxes = box_convert(boxes.float(), "cxcywh", "xyxy") * scale[:, None, :]
        boxes = boxes.gather(1, queries.unsqueeze(-1).expand(-1, -1, 4))
        found = []
        for s, c, b, q in zip(scores, labels, boxes, queries):
            keep = s >= self.score_threshold  # already best first
            found.append({"scores": s[keep], "labels": c[keep], "boxes": b[keep], "queries": q[keep]})
        return found
