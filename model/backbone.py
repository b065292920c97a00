"""The backbone whose last feature map feeds the transformer: a torchvision ResNet, or a
small plain CNN for presets trained from scratch on a CPU."""
from __future__ import annotations

import io
import pickle
from collections import OrderedDict

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import Conv2dNormActivation, FrozenBatchNorm2d

import storage as uris

from .config import SMALL_CNN_WIDTHS, DetrConfig


def _norm_layer(kind: str):
    if kind == "frozen_bn":
        return FrozenBatchNorm2d
    if kind == "batch_norm":
        return nn.BatchNorm2d
    return lambda channels: nn.GroupNorm(32, channels)


def small_cnn(norm_layer) -> nn.Sequential:
    """Stages layer1..layer4 of two 3x3 convolution-norm-ReLU blocks, the first of each with
    stride 2: output stride 16 and SMALL_CNN_WIDTHS channels, about a sixth of ResNet-18's
    time up to layer3 on ~150 px images, so a CPU run buys six times the optimizer steps."""
    stages: OrderedDict[str, nn.Module] = OrderedDict()
    in_channels = 3
    for i, width in enumerate(SMALL_CNN_WIDTHS, 1):
        stages[f"layer{i}"] = nn.Sequential(
            Conv2dNormActivation(in_channels, width, stride=2, norm_layer=norm_layer),
            Conv2dNormActivation(width, width, norm_layer=norm_layer),
        )
        in_channels = width
    return nn.Sequential(stages)


def load_resnet_weights(cnn: nn.Module, source: str) -> None:
    """A torchvision ResNet state_dict file (path or s3://; e.g. ImageNet's), BatchNorm
    statistics included, loaded without unpickling code. A file of another architecture is
    a ValueError naming what does not match."""
    try:
        state = torch.load(io.BytesIO(uris.read_bytes(source)), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{source} is not a plain state_dict file (weights only): {e}") from e
    if not isinstance(state, dict):
        raise ValueError(f"{source} holds a {type(state).__name__}, not a ResNet state_dict")
    try:
        result = cnn.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shapes that differ
        raise ValueError(f"{source} is not a state_dict of this backbone: {str(e).splitlines()[-1].strip()}") from e
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise ValueError(f"{source} is not a state_dict of this backbone: missing {missing[:5]}, unexpected "
                         f"{result.unexpected_keys[:5]} ({len(missing)} and {len(result.unexpected_keys)} keys)")


class Backbone(nn.Module):
    """torchvision ResNet (or small_cnn) up to layer4 (or layer3); conv1 and layer1 are frozen
    as in the reference unless config.train_stem."""

    def __init__(self, config: DetrConfig, weights: str | None = None):
        super().__init__()
        if config.backbone == "small_cnn":
            if weights is not None:
                raise ValueError("the small_cnn backbone has no pretrained weights to load")
            cnn = small_cnn(_norm_layer(config.backbone_norm))
        else:
            cnn = getattr(torchvision.models, config.backbone)(
                weights=None,
                replace_stride_with_dilation=[False, False, config.dilation],
                norm_layer=_norm_layer(config.backbone_norm),
            )
        if weights is not None:
            load_resnet_weights(cnn, weights)
        if not config.train_stem:
            for name, parameter in cnn.named_parameters():
                if not name.startswith(("layer2", "layer3", "layer4")):
                    parameter.requires_grad_(False)
        last = f"layer{config.backbone_stages}"
        self.body = IntermediateLayerGetter(cnn, return_layers={last: "0"})
        self.num_channels = config.backbone_channels
        self.masked = config.masked_backbone
        self.channels_last = False  # set by model.inference.optimize_for_inference

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [B,3,H,W], mask [B,H,W] (True = padding) -> features [B,C,h,w], mask [B,h,w]."""
        stages, mask = self.stages(images, mask, keep_earlier=False)
        return stages[-1], mask

    def stages(self, images: torch.Tensor, mask: torch.Tensor,
               keep_earlier: bool = True) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The stages' features (layer1 first; the last alone unless keep_earlier: a ResNet's
        layer1 at 800x1333 holds 0.5 GB per 8 images) and the last one's mask."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if self.masked:
            return self._masked(images, mask, keep_earlier)
        features, stages = images, []
        for name, module in self.body.named_children():
            features = module(features)
            if keep_earlier and name.startswith("layer"):
                stages.append(features)
        stages = stages if keep_earlier else [features]
        mask = F.interpolate(mask[None].float(), size=features.shape[-2:]).to(torch.bool)[0]
        return stages, mask

    def _masked(self, images: torch.Tensor, mask: torch.Tensor,
                keep_earlier: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
        """small_cnn block by block, features zeroed on padding after each. A 3x3 convolution
        of stride s (padding 1) centres output j on input s*j, so the mask of its output is the
        input mask taken every s-th pixel (a 1x1 pooling of stride s, whose output size has the
        convolution's own formula): output j is valid exactly when the image alone has it."""
        features, padding, stages = images, mask[:, None].float(), []
        for stage in self.body.values():
            for block in stage:
                features = block(features)
                padding = F.max_pool2d(padding, kernel_size=1, stride=block[0].stride)
                features = features * (1 - padding).to(features.dtype)
            if keep_earlier:
                stages.append(features)
        return stages if keep_earlier else [features], padding[:, 0].to(torch.bool)
