"""DETR's mask head (the paper's section 4.4; the reference's DETRsegm), with its key names.

Each decoder output (object query) attends over the encoder's memory: bbox_attention, a
multi-head attention map per query [B,Q,heads,h,w]. mask_head, a small FPN-style convolutional
head, concatenates those maps with the projected backbone features and upsamples them through
the backbone's earlier stages (their features added through 1x1 adapters), to one mask logit
map per query at the first of those stages' stride: 4 for a ResNet (layer3, layer2, layer1),
2 for detr-tiny's small_cnn, whose stages are a stride finer (model/backbone.py).

build_detr builds a DETR, or with the mask head (masks=True) a DETRsegm around one.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import SMALL_CNN_WIDTHS, DetrConfig, get_config
from .contract import InputContract
from .detr import DETR
from .network import DetectionNetwork
from .precision import float32, upcast

MASK_HEAD_STAGES = 3  # the backbone stages before the last that the mask head adds, deepest first


def fpn_channels(config: DetrConfig) -> list[int]:
    """Channels of the backbone stages the mask head reads, deepest first (ResNet-50: 1024,
    512, 256): the MASK_HEAD_STAGES stages before the transformer's."""
    if config.backbone == "small_cnn":
        widths = list(SMALL_CNN_WIDTHS)
    else:
        expansion = 1 if config.backbone in ("resnet18", "resnet34") else 4
        widths = [64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion]
    last = config.backbone_stages
    return [widths[i] for i in range(last - 2, last - 2 - MASK_HEAD_STAGES, -1) if i >= 0]


class MHAttentionMap(nn.Module):
    """The softmax attention weights (no values) of each query over the memory, per head."""

    def __init__(self, query_dim: int, hidden_dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_heads, self.hidden_dim = num_heads, hidden_dim
        self.dropout = nn.Dropout(dropout)
        self.q_linear = nn.Linear(query_dim, hidden_dim)
        self.k_linear = nn.Linear(query_dim, hidden_dim)
        for linear in (self.q_linear, self.k_linear):
            nn.init.zeros_(linear.bias)
            nn.init.xavier_uniform_(linear.weight)
        self.normalize_fact = float(hidden_dim / num_heads) ** -0.5

    def forward(self, q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """q [B,Q,C], k [B,C,h,w], mask [B,h,w] (True = padding) -> weights [B,Q,heads,h,w]."""
        q = self.q_linear(q)
        k = F.conv2d(k, self.k_linear.weight[:, :, None, None], self.k_linear.bias)
        head = self.hidden_dim // self.num_heads
        qh = q.view(q.shape[0], q.shape[1], self.num_heads, head)
        kh = k.view(k.shape[0], self.num_heads, head, k.shape[-2], k.shape[-1])
        weights = torch.einsum("bqnc,bnchw->bqnhw", qh * self.normalize_fact, kh)
        if mask is not None:
            weights = weights.masked_fill(mask[:, None, None], float("-inf"))
        weights = F.softmax(weights.flatten(2), dim=-1).view(weights.size())
        return self.dropout(weights)


def _expand(tensor: torch.Tensor, length: int) -> torch.Tensor:
    """[B,...] -> [B*length,...], each image repeated for each of its queries."""
    return tensor.unsqueeze(1).repeat(1, int(length), 1, 1, 1).flatten(0, 1)


class MaskHeadSmallConv(nn.Module):
    """Convolutions with group norm, upsampled through the backbone's stages (an FPN's top-down
    path): one mask logit map per (image, query)."""

    def __init__(self, dim: int, fpn_dims: list[int], context_dim: int) -> None:
        super().__init__()
        inter = [dim, context_dim // 2, context_dim // 4, context_dim // 8, context_dim // 16]
        self.lay1 = nn.Conv2d(dim, dim, 3, padding=1)
        self.gn1 = nn.GroupNorm(8, dim)
        self.lay2 = nn.Conv2d(dim, inter[1], 3, padding=1)
        self.gn2 = nn.GroupNorm(8, inter[1])
        self.lay3 = nn.Conv2d(inter[1], inter[2], 3, padding=1)
        self.gn3 = nn.GroupNorm(8, inter[2])
        self.lay4 = nn.Conv2d(inter[2], inter[3], 3, padding=1)
        self.gn4 = nn.GroupNorm(8, inter[3])
        self.lay5 = nn.Conv2d(inter[3], inter[4], 3, padding=1)
        self.gn5 = nn.GroupNorm(8, inter[4])
        self.out_lay = nn.Conv2d(inter[4], 1, 3, padding=1)
        self.dim = dim
        self.adapter1 = nn.Conv2d(fpn_dims[0], inter[1], 1)
        self.adapter2 = nn.Conv2d(fpn_dims[1], inter[2], 1)
        self.adapter3 = nn.Conv2d(fpn_dims[2], inter[3], 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor, bbox_mask: torch.Tensor, fpns: list[torch.Tensor],
                image_index: torch.Tensor | None = None) -> torch.Tensor:
        """x [B,C,h,w] (projected features), bbox_mask [B,Q,heads,h,w], fpns deepest first ->
        [B*Q,1,H,W] at the last fpn's size. With image_index [N], bbox_mask is [N,heads,h,w]:
        N chosen queries, each of the image image_index says -> [N,1,H,W]."""
        if image_index is None:
            x = torch.cat([_expand(x, bbox_mask.shape[1]), bbox_mask.flatten(0, 1)], 1)
        else:
            x = torch.cat([x[image_index], bbox_mask], 1)
        x = F.relu(self.gn1(self.lay1(x)))
        x = F.relu(self.gn2(self.lay2(x)))
        for adapter, lay, gn, fpn in ((self.adapter1, self.lay3, self.gn3, fpns[0]),
                                      (self.adapter2, self.lay4, self.gn4, fpns[1]),
                                      (self.adapter3, self.lay5, self.gn5, fpns[2])):
            fpn = adapter(fpn)
            if image_index is not None:
                fpn = fpn[image_index]
            elif fpn.size(0) != x.size(0):
                fpn = _expand(fpn, x.size(0) // fpn.size(0))
            x = fpn + F.interpolate(x, size=fpn.shape[-2:], mode="nearest")
            x = F.relu(gn(lay(x)))
        return self.out_lay(x)


class DETRsegm(DetectionNetwork):
    """DETR (self.detr) with a mask head: its outputs plus pred_masks [B,Q,H,W], mask logits at
    the stride of the backbone's first stage the head reads. The head runs in float32 (under
    bf16 autocast too): mask logits are thresholded and summed over many pixels."""

    def __init__(self, detr: DETR, freeze_detr: bool = False) -> None:
        super().__init__()
        self.detr = detr
        self.detr_frozen = False
        if freeze_detr:
            self.freeze_detr()
        config = detr.config
        if len(fpn_channels(config)) < MASK_HEAD_STAGES:
            raise ValueError(f"the mask head reads {MASK_HEAD_STAGES} backbone stages before the last: "
                             f"{config.backbone} with backbone_stages {config.backbone_stages} has fewer")
        hidden_dim, nheads = config.hidden_dim, config.nheads
        self.bbox_attention = MHAttentionMap(hidden_dim, hidden_dim, nheads, dropout=0.0)
        self.mask_head = MaskHeadSmallConv(hidden_dim + nheads, fpn_channels(config), hidden_dim)

    def freeze_detr(self) -> None:
        """Train the mask head alone (the paper's second stage): the DETR's weights fixed, and its
        batch norm statistics too (it stays in eval mode)."""
        for parameter in self.detr.parameters():
            parameter.requires_grad_(False)
        self.detr_frozen = True
        self.train(self.training)

    def train(self, mode: bool = True) -> DETRsegm:
        super().train(mode)
        if self.detr_frozen:
            self.detr.eval()
        return self

    @property
    def config(self) -> DetrConfig:
        """The DETR's (with masks=True)."""
        return self.detr.config

    @config.setter
    def config(self, value: DetrConfig) -> None:
        self.detr.config = value

    @property
    def contract(self) -> InputContract | None:
        """The input contract (model/contract.py): the DETR's."""
        return self.detr.contract

    @contract.setter
    def contract(self, value: InputContract | None) -> None:
        self.detr.contract = value

    def forward(self, images, mask: torch.Tensor | None = None,
                mask_queries: Callable[[dict], torch.Tensor] | None = None) -> dict:
        """mask_queries (inference): outputs -> [B,Q] bool, the queries whose masks are wanted; the
        head runs on those alone (its cost is per query) and the others' logits are -inf."""
        out, hs, memory, src, feature_mask, stages = self.detr.forward_with_features(images, mask)
        batch, queries = hs.shape[1], hs.shape[2]
        with float32(hs.device):
            bbox_mask = self.bbox_attention(upcast(hs[-1]), upcast(memory), mask=feature_mask)
            fpns = [upcast(stages[i]) for i in range(len(stages) - 2, len(stages) - 2 - MASK_HEAD_STAGES, -1)]
            if mask_queries is None:
                masks = self.mask_head(upcast(src), bbox_mask, fpns)
                out["pred_masks"] = masks.view(batch, queries, masks.shape[-2], masks.shape[-1])
                return out
            chosen = mask_queries(out)
            out["pred_masks"] = torch.full((batch, queries, *fpns[-1].shape[-2:]), float("-inf"), device=hs.device)
            if chosen.any():
                masks = self.mask_head(upcast(src), bbox_mask[chosen], fpns, chosen.nonzero()[:, 0])
                out["pred_masks"][chosen] = masks[:, 0]
        return out


def build_detr(preset: str | DetrConfig = "detr-r50", backbone_weights: str | None = None,
               **overrides: Any) -> DETR | DETRsegm:
    """A randomly initialised DETR from a preset name or a DetrConfig, fields overridden: a
    DETRsegm around it when the config has the mask head (masks=True).

    backbone_weights: optional path of a torchvision ResNet state_dict (e.g. ImageNet
    weights) loaded into the backbone before training.
    """
    config = get_config(preset, **overrides)
    if config.masks:
        return DETRsegm(DETR(config, backbone_weights))
    return DETR(config, backbone_weights)
