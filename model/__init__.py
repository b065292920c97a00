"""DETR in pure PyTorch: network, matcher, losses, post-processing, checkpoints."""
from .checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint, weights_id
from .config import PRESETS, DetrConfig, get_config
from .criterion import SetCriterion, build_criterion
from .detr import DETR, build_detr, pad_images
from .inference import optimize_for_inference
from .matcher import HungarianMatcher
from .postprocess import PostProcess

__all__ = [
    "CheckpointError",
    "DETR",
    "DetrConfig",
    "HungarianMatcher",
    "PRESETS",
    "PostProcess",
    "SetCriterion",
    "build_criterion",
    "build_detr",
    "get_config",
    "load_checkpoint",
    "optimize_for_inference",
    "pad_images",
    "read_checkpoint",
    "save_checkpoint",
    "weights_id",
]
