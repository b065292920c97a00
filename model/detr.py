"""DETR: backbone + transformer + set-prediction heads (Carion et al., 2020)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from .backbone import Backbone
from .config import DetrConfig
from .mlp import MLP
from .network import DetectionNetwork
from .position_encoding import PositionEmbeddingSine
from .precision import float32, upcast
from .query_selection import QuerySelection, inverse_sigmoid
from .transformer import build_transformer


def pad_images(images: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad 3xHxW images bottom/right to one batch; mask [B,H,W] is True on padding."""
    height = max(img.shape[1] for img in images)
    width = max(img.shape[2] for img in images)
    first = images[0]
    batch = first.new_zeros((len(images), first.shape[0], height, width))
    mask = torch.ones((len(images), height, width), dtype=torch.bool, device=first.device)
    for img, padded, m in zip(images, batch, mask):
        padded[:, : img.shape[1], : img.shape[2]].copy_(img)
        m[: img.shape[1], : img.shape[2]] = False
    return batch, mask


class DETR(DetectionNetwork):
    """Predicts a fixed-size set of (class, box) pairs per image.

    Outputs: pred_logits [B,Q,num_classes+1] (the last logit is "no object"),
    pred_boxes [B,Q,4] normalised (cx, cy, w, h), and aux_outputs, the same two
    for every decoder layer but the last (when config.aux_loss). With config.two_stage also
    enc_outputs: the encoder tokens' proposals (pred_logits, pred_boxes, padding [B,L]).
    """

    def __init__(self, config: DetrConfig, backbone_weights: str | None = None):
        super().__init__()
        self.config: DetrConfig = config
        self.contract = None
        hidden_dim = config.hidden_dim
        # backbone.0 = ResNet, backbone.1 = positional encoding: the reference's key names.
        self.backbone = nn.ModuleList(
            [Backbone(config, backbone_weights), PositionEmbeddingSine(hidden_dim // 2)]
        )
        self.transformer = build_transformer(config)
        self.input_proj = nn.Conv2d(config.backbone_channels, hidden_dim, kernel_size=1)
        if config.two_stage:
            self.query_selection = QuerySelection(hidden_dim, config.num_classes, config.num_queries,
                                                  config.distinct_query_iou)
        else:
            self.query_embed = nn.Embedding(config.num_queries, hidden_dim)
        self.class_embed = nn.Linear(hidden_dim, config.num_classes + 1)
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        if config.two_stage:  # the box head refines a reference box: it starts by predicting it
            nn.init.zeros_(self.bbox_embed.last.weight)
            nn.init.zeros_(self.bbox_embed.last.bias)

    def forward(
        self, images: torch.Tensor | Sequence[torch.Tensor], mask: torch.Tensor | None = None
    ) -> dict:
        """images: a list of normalised 3xHxW tensors, one 3xHxW image, or a padded
        [B,3,H,W] batch with its mask [B,H,W] (True = padding; all False if omitted)."""
        return self.forward_with_features(images, mask, keep_stages=False)[0]

    def forward_with_features(self, images: torch.Tensor | Sequence[torch.Tensor], mask: torch.Tensor | None = None,
                              keep_stages: bool = True) -> tuple[dict, torch.Tensor, torch.Tensor, torch.Tensor,
                                                                 torch.Tensor, list[torch.Tensor]]:
        """forward's outputs, and what a mask head reads (model/segmentation.py): the decoder's
        outputs hs [L,B,Q,C], the encoder's memory [B,C,h,w], the projected features src
        [B,C,h,w], their mask [B,h,w], and the backbone stages' features (all with
        keep_stages, else the last)."""
        images, mask = self._as_batch(images, mask)
        stages, mask = cast(Backbone, self.backbone[0]).stages(images, mask, keep_earlier=keep_stages)
        pos = self.backbone[1](mask).to(stages[-1].dtype)
        src = self.input_proj(stages[-1])
        if self.config.two_stage:
            memory, pos, key_mask = self.transformer.encode(src, mask, pos)
            proposals, content, query_pos, reference = self.query_selection(memory, mask)
            hs = self.transformer.decoder(content, memory, pos, query_pos, key_mask)
            memory = memory.transpose(1, 2).reshape(src.shape)
            with float32(hs.device):
                boxes = (self.bbox_embed(upcast(hs)) + inverse_sigmoid(upcast(reference))).sigmoid()
        else:
            hs, memory = self.transformer(src, mask, self.query_embed.weight, pos)
            with float32(hs.device):
                boxes = self.bbox_embed(upcast(hs)).sigmoid()
        with float32(hs.device):
            logits = self.class_embed(upcast(hs))
        out = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.config.aux_loss:
            out["aux_outputs"] = [
                {"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])
            ]
        if self.config.two_stage:
            out["enc_outputs"] = proposals
        return out, hs, memory, src, mask, stages

    @staticmethod
    def _as_batch(images, mask) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(images, torch.Tensor) and images.dim() == 3:
            images = [images]
        if not isinstance(images, torch.Tensor):
            if not len(images):
                raise ValueError("DETR needs at least one image")
            if mask is not None:
                raise ValueError("a mask goes with a padded 4-D batch, not a list of images")
            return pad_images(images)
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected [B,3,H,W] images, got shape {tuple(images.shape)}")
        if mask is None:
            mask = torch.zeros(images.shape[:1] + images.shape[2:], dtype=torch.bool, device=images.device)
        elif mask.shape != images.shape[:1] + images.shape[2:]:
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match images {tuple(images.shape)}")
        return images, mask
