"""Two-stage query selection: the encoder's tokens propose boxes, the best become object queries.

The paper's learned object queries must discover, by slow trial, where to look; trained from
scratch in minutes they never do (bench/README.md, `learning`). Here, as in
Deformable DETR's two-stage variant (Zhu et al., 2021, sec. 4.1) and Efficient DETR (Yao et
al., 2021), every encoder token predicts a class and a box relative to its own grid cell, a
dense detector supervised by the same set loss; the num_queries best tokens then seed the
decoder: their features as content, their boxes (detached) as reference boxes that the
decoder's box head refines.

With distinct_iou set, the top-k skip proposals that overlap a better one (class-agnostic
NMS, as DDQ selects its "distinct queries": Zhang et al., 2023): the encoder's one-to-many
matching trains several tokens onto each object, and duplicate queries both waste the few
query slots and leave the decoder to learn to suppress them (bench/README.md, `learning`).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torchvision.ops import box_convert, nms

from .mlp import MLP
from .precision import float32, upcast

ANCHOR_SIZE = 0.05  # a token's initial box side, in image fractions (Deformable DETR's)


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    x = x.clamp(eps, 1 - eps)
    return torch.log(x / (1 - x))


def token_anchors(mask: torch.Tensor) -> torch.Tensor:
    """mask [B,h,w] (True = padding) -> anchors [B,h*w,4]: each token's cell centre
    (cx, cy), normalised over the image's unpadded area like the target boxes, and size."""
    batch, height, width = mask.shape
    valid_h = (~mask[:, :, 0]).sum(1).clamp(min=1).float()
    valid_w = (~mask[:, 0, :]).sum(1).clamp(min=1).float()
    ys, xs = torch.meshgrid(torch.arange(height, device=mask.device), torch.arange(width, device=mask.device),
                            indexing="ij")
    cx = (xs.flatten()[None] + 0.5) / valid_w[:, None]
    cy = (ys.flatten()[None] + 0.5) / valid_h[:, None]
    size = torch.full_like(cx, ANCHOR_SIZE)
    return torch.stack([cx, cy, size, size], dim=-1)


def sine_box_embedding(boxes: torch.Tensor, num_feats: int, temperature: float = 10000.0) -> torch.Tensor:
    """[..., 4] boxes in [0, 1] -> [..., 4 * num_feats]: the feature map's sine encoding
    (model.position_encoding) applied to each coordinate."""
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=boxes.device)
    dim_t = temperature ** (2 * (dim_t // 2) / num_feats)
    pos = boxes[..., None].float() * 2 * math.pi / dim_t
    return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-3)


def distinct_top_k(scores: torch.Tensor, boxes: torch.Tensor, k: int, iou: float | None) -> torch.Tensor:
    """scores [B,L] (padding < 0), boxes [B,L,4] cxcywh -> [B,k] token indices, best first.
    With iou, tokens whose box overlaps a better-scoring token's by more than iou come only
    after every distinct token (they fill what the distinct ones leave); padding comes last."""
    if iou is None:
        return scores.topk(k, dim=1).indices
    batch, length = scores.shape
    image = torch.arange(batch, device=scores.device)[:, None].expand(batch, length).flatten()  # exports, unlike repeat_interleave
    # One NMS over the batch with each image's boxes moved apart (batched_nms's own trick, without
    # its size-dependent switch to a loop, which an exported graph cannot follow). A box lies
    # within [-0.5, 1.5] (cx, cy, w, h in [0, 1]), so a shift of 2 per image keeps them apart.
    xyxy = box_convert(boxes.flatten(0, 1).float(), "cxcywh", "xyxy")
    keep = nms(xyxy + 2.0 * image[:, None].to(xyxy.dtype), scores.flatten(), iou)
    distinct = torch.zeros(batch * length, dtype=torch.bool, device=scores.device)
    distinct[keep] = True
    # Distinct tokens first: + 2 (scores lie in [0, 1]), in float64, where the sum is exact; in
    # float32 it rounds close scores into ties, which top-k breaks differently on each runtime.
    priority = scores.double() + 2.0 * (distinct.view(batch, length) & (scores >= 0))
    return priority.topk(k, dim=1).indices


class QuerySelection(nn.Module):
    """Encoder-token proposals and the top-k of them as decoder queries."""

    def __init__(self, hidden_dim: int, num_classes: int, num_queries: int, distinct_iou: float | None = None):
        super().__init__()
        self.num_queries = num_queries
        self.distinct_iou = distinct_iou
        self.output = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.LayerNorm(hidden_dim))
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        self.query_pos = MLP(2 * hidden_dim, hidden_dim, hidden_dim, 2)  # from the reference box
        # Proposals start exactly on their anchors, so the first matchings pair each object with
        # the tokens around it rather than with wherever random weights send a box.
        nn.init.zeros_(self.bbox_embed.last.weight)
        nn.init.zeros_(self.bbox_embed.last.bias)

    def forward(
        self, memory: torch.Tensor, mask: torch.Tensor
    ) -> tuple[dict, torch.Tensor, torch.Tensor, torch.Tensor]:
        """memory [B,L,C] (L = h*w tokens), mask [B,h,w] -> (proposals, content [B,K,C],
        query_pos [B,K,C], reference boxes [B,K,4]); proposals are the loss's dict of
        pred_logits / pred_boxes over all L tokens with their padding mask."""
        padding = mask.flatten(1)
        with float32(memory.device):  # the proposals' heads, as the decoder's (model/precision.py)
            features = self.output(upcast(memory))
            logits = self.class_embed(features)
            boxes = (self.bbox_embed(features) + inverse_sigmoid(token_anchors(mask))).sigmoid()
        proposals = {"pred_logits": logits, "pred_boxes": boxes, "padding": padding}

        scores = logits.detach().float().softmax(-1)[..., :-1].max(-1).values
        # Padding ranks last, in token order: distinct values make top-k's choice among them the
        # same everywhere (ties have no defined order in torch; ONNX Runtime takes the lowest index).
        order = torch.arange(padding.shape[1], device=padding.device) / padding.shape[1]
        scores = torch.where(padding, -1.0 - order, scores)
        top = distinct_top_k(scores, boxes.detach(), min(self.num_queries, scores.shape[1]), self.distinct_iou)  # [B,K]
        content = memory.gather(1, top[..., None].expand(-1, -1, memory.shape[-1]))
        reference = boxes.detach().gather(1, top[..., None].expand(-1, -1, 4))
        num_feats = self.query_pos.first.in_features // 4
        query_pos = self.query_pos(sine_box_embedding(reference, num_feats).to(memory.dtype))
        return proposals, content, query_pos, reference
