"""An inference-only copy of DETR: normalisation folded into the convolutions, channels-last.

Frozen (and eval-mode) batch norm is a fixed per-channel affine map, so it folds into the
convolution before it; channels-last lets oneDNN / cuDNN pick their fastest convolution
kernels. Outputs stay equal to the original model's within float32 rounding (~1e-5).
"""
from __future__ import annotations

import copy
from typing import cast

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.ops import FrozenBatchNorm2d

from .backbone import Backbone
from .detr import DETR
from .segmentation import DETRsegm

# (convolution, norm) child pairs in torchvision's ResNet: stem, blocks, downsample
_CONV_NORM_PAIRS = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"), ("0", "1"))


def _fold(conv: nn.Conv2d, norm: FrozenBatchNorm2d | nn.BatchNorm2d) -> nn.Conv2d:
    folded = copy.deepcopy(conv)
    mean, var = norm.running_mean, norm.running_var
    assert isinstance(mean, torch.Tensor) and isinstance(var, torch.Tensor)  # frozen or eval: tracked stats
    weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, mean, var, norm.eps, norm.weight, norm.bias)
    folded.weight, folded.bias = weight, bias
    return folded


def fold_batch_norm(module: nn.Module) -> int:
    """Fold every frozen/eval batch norm that follows a convolution into it; returns the count."""
    folded = 0
    for parent in list(module.modules()):
        for conv_name, norm_name in _CONV_NORM_PAIRS:
            conv, norm = parent._modules.get(conv_name), parent._modules.get(norm_name)
            if isinstance(conv, nn.Conv2d) and isinstance(norm, (FrozenBatchNorm2d, nn.BatchNorm2d)):
                parent._modules[conv_name] = _fold(conv, norm)
                parent._modules[norm_name] = nn.Identity()
                folded += 1
    return folded


def optimize_for_inference(model: DETR | DETRsegm, channels_last: bool = True) -> DETR | DETRsegm:
    """A copy of `model` (a DETR, or a DETRsegm around one) for inference only (its state_dict
    no longer has the reference keys: save the original, never this one)."""
    model = copy.deepcopy(model).eval()
    backbone = cast(Backbone, (model.detr if isinstance(model, DETRsegm) else model).backbone[0])
    fold_batch_norm(backbone.body)
    if channels_last:
        backbone.channels_last = True
        backbone.to(memory_format=torch.channels_last)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    model.inference_only = True
    return model
