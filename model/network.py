"""What every model the jobs hold is: an nn.Module with its config and its input contract.
DETR (model/detr.py), DETRsegm (model/segmentation.py) and TransformersDetector
(model/transformers_detector.py) are DetectionNetworks; model/interface.py says what is done with
one by its config (built, post-processed, copied for inference)."""
from __future__ import annotations

from torch import nn

from .config import DetrConfig
from .contract import InputContract
from .families import FamilyConfig

ModelConfig = DetrConfig | FamilyConfig


class DetectionNetwork(nn.Module):
    """forward(pixels [B,3,H,W], mask [B,H,W] True on padding) -> {"pred_logits", "pred_boxes"
    [, "pred_masks"]}."""

    config: ModelConfig
    # How images become this model's input, when known (model/contract.py): set by load_checkpoint
    # and by training, recorded by save_checkpoint; None where the checkpoint records none.
    contract: InputContract | None
    inference_only: bool = False  # a copy made for inference (folded weights): never saved
