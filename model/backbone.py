"""ResNet backbone (torchvision) whose last feature map feeds the transformer."""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import FrozenBatchNorm2d

from .config import DetrConfig


def _norm_layer(kind: str):
    if kind == "frozen_bn":
        return FrozenBatchNorm2d
    if kind == "batch_norm":
        return nn.BatchNorm2d
    return lambda channels: nn.GroupNorm(32, channels)


class Backbone(nn.Module):
    """torchvision ResNet up to layer4 (or layer3); conv1 and layer1 are frozen as in the
    reference unless config.train_stem."""

    def __init__(self, config: DetrConfig, weights: str | None = None):
        super().__init__()
        resnet = getattr(torchvision.models, config.backbone)(
            weights=None,
            replace_stride_with_dilation=[False, False, config.dilation],
            norm_layer=_norm_layer(config.backbone_norm),
        )
        if weights is not None:  # an ImageNet state_dict file of torchvision's ResNet
            resnet.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        if not config.train_stem:
            for name, parameter in resnet.named_parameters():
                if not name.startswith(("layer2", "layer3", "layer4")):
                    parameter.requires_grad_(False)
        last = f"layer{config.backbone_stages}"
        self.body = IntermediateLayerGetter(resnet, return_layers={last: "0"})
        self.num_channels = config.backbone_channels
        self.channels_last = False  # set by model.inference.optimize_for_inference

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [B,3,H,W], mask [B,H,W] (True = padding) -> features [B,C,h,w], mask [B,h,w]."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        features = self.body(images)["0"]
        mask = F.interpolate(mask[None].float(), size=features.shape[-2:]).to(torch.bool)[0]
        return features, mask
