"""The one model interface every job uses, over the project's DETR and transformers' families.

A model is a DetectionNetwork (model/network.py): an nn.Module with
- `config`: DetrConfig or FamilyConfig (num_classes, num_queries, masks, stuff_classes, to_dict);
- `contract`: its InputContract (model/contract.py), or None where it records none;
- `forward(pixels, mask)` -> {"pred_logits", "pred_boxes"[, "pred_masks"]};
and these functions give the rest by its config: how it is built (build_model, preset_config),
how its outputs become the predictions table's boxes (postprocess_for), and the copy that bulk
detection runs (inference_copy). Its loss: DETR's SetCriterion on its outputs (model/criterion.py);
a family's forward(pixels, mask, targets) returns its own loss terms (model/transformers_detector.py),
since its denoising queries are made from the targets inside the model.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from .config import PRESETS, DetrConfig, get_config
from .contract import InputContract
from .families import FAMILY_PRESETS, PRESET_NAMES, FamilyConfig, is_family_dict
from .mask_postprocess import image_masks, resized_masks
from .network import DetectionNetwork, ModelConfig

if TYPE_CHECKING:
    from .postprocess import PostProcess

# A query's mask logits [k,h,w] -> its masks [k,H,W] uint8 at the original size, given the canvas
# the batch was fed on, the image's size on it and its original size
MaskRule = Callable[[torch.Tensor, tuple[int, int], tuple[int, int], tuple[int, int]], torch.Tensor]

def config_from_dict(d: dict[str, Any]) -> ModelConfig:
    return FamilyConfig.from_dict(d) if is_family_dict(d) else DetrConfig.from_dict(d)


def build_model(config: ModelConfig) -> DetectionNetwork:
    """The network of a config, randomly initialised (the caller loads weights)."""
    if isinstance(config, FamilyConfig):
        from .transformers_detector import TransformersDetector

        return TransformersDetector(config)
    from .segmentation import build_detr

    return build_detr(config)


def preset_config(preset: str, num_classes: int | None = None, **overrides: Any) -> ModelConfig:
    """A DETR preset (model/config.py) or a family preset (model/families.py) by name."""
    if preset in FAMILY_PRESETS:
        config = FAMILY_PRESETS[preset][0]
        changes = {**overrides, **({"num_labels": num_classes} if num_classes is not None else {})}
        return config.replace(**changes) if changes else config
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {PRESET_NAMES}")
    return get_config(preset, **overrides, **({"num_classes": num_classes} if num_classes is not None else {}))


def preset_contract(preset: str) -> InputContract | None:
    """A family preset's own input contract (a fixed size); None for DETR's, which take the run's."""
    return FAMILY_PRESETS[preset][1] if preset in FAMILY_PRESETS else None


def postprocess_for(config: ModelConfig, score_threshold: float) -> PostProcess:
    """DETR's softmax with "no object" (every query that passes), or the descendants' sigmoid
    top-k (their authors' k)."""
    from .postprocess import PostProcess, TopKPostProcess  # torchvision's ops: not for reading a config

    if isinstance(config, FamilyConfig):
        return TopKPostProcess(score_threshold, top_k=config.top_k)
    return PostProcess(score_threshold, top_k=config.num_queries)


def mask_rule_for(config: ModelConfig) -> MaskRule:
    """DETR's mask head: the reference's rule (upsampled to the canvas, thresholded, cropped,
    resized nearest); RF-DETR's: transformers' (upsampled to the original size, positive logits)."""
    return resized_masks if isinstance(config, FamilyConfig) else image_masks


def inference_copy(model: DetectionNetwork) -> DetectionNetwork:
    """What bulk detection and validation run: DETR with its batch norms folded, channels-last
    (model/inference.py); a family's model as an eval-mode copy without gradients."""
    from .detr import DETR
    from .inference import optimize_for_inference
    from .segmentation import DETRsegm

    if isinstance(model, (DETR, DETRsegm)):
        return optimize_for_inference(model)
    copied = copy.deepcopy(model).eval()
    for parameter in copied.parameters():
        parameter.requires_grad_(False)
    copied.inference_only = True
    return copied

