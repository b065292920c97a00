"""Random-weight folders of every listed transformers family, made with transformers itself
(nothing downloaded): tiny configs, their weights as save_pretrained writes them, and the image
processor a user's folder would carry."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.families import FAMILIES, FAMILY_PRESETS

FIXED = 128  # the fixed-size families' input side (a multiple of the ViT families' 16-pixel windows)


def tiny_config(model_type: str, num_labels: int = 4) -> dict[str, Any]:
    if model_type in ("rt_detr", "rt_detr_v2"):
        return {**FAMILY_PRESETS["rtdetr-tiny"][0].hf, "num_labels": num_labels}
    if model_type in ("d_fine", "deimv2"):
        return {**FAMILY_PRESETS["dfine-tiny"][0].hf, "num_labels": num_labels}
    if model_type in ("deformable_detr", "conditional_detr"):
        return dict(use_timm_backbone=False, use_pretrained_backbone=False,
                    backbone_config={"model_type": "resnet", "embedding_size": 16, "hidden_sizes": [16, 32, 64, 128],
                                     "depths": [1, 1, 1, 1], "layer_type": "basic",
                                     "out_features": ["stage2", "stage3", "stage4"]},
                    d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                    encoder_attention_heads=2, decoder_attention_heads=2, num_queries=20, num_labels=num_labels,
                    **({"num_feature_levels": 3} if model_type == "deformable_detr" else {}))
    if model_type in ("rf_detr", "lw_detr"):
        rf = model_type == "rf_detr"
        return dict(backbone_config={"model_type": "rf_detr_dinov2" if rf else "lw_detr_vit", "hidden_size": 32,
                                     "num_hidden_layers": 2, "num_attention_heads": 2, "patch_size": 8,
                                     "num_windows": 2 if rf else 4, "image_size": 64, "out_indices": [1, 2],
                                     **({} if rf else {"window_block_indices": [0]})},
                    d_model=32, decoder_layers=1, decoder_ffn_dim=64, decoder_self_attention_heads=2,
                    decoder_cross_attention_heads=2, num_queries=20, group_detr=2, num_labels=num_labels,
                    **({} if rf else {"projector_scale_factors": [1.0]}))
    raise ValueError(model_type)


def processor(model_type: str, size: dict[str, int] | None = None) -> Any:
    """The image processor of a folder of this family (a fixed 128x128, or DETR's shorter-side rule)."""
    import transformers

    if model_type in ("deformable_detr", "conditional_detr"):
        cls = getattr(transformers, "DeformableDetrImageProcessor" if model_type == "deformable_detr"
                      else "ConditionalDetrImageProcessor")
        return cls(size=size or {"shortest_edge": 96, "longest_edge": 160})
    size = size or {"height": FIXED, "width": FIXED}
    if model_type == "rf_detr":
        return transformers.RfDetrImageProcessor(size=size)
    if model_type == "lw_detr":
        return transformers.DeformableDetrImageProcessor(size=size, do_pad=False)
    return transformers.RTDetrImageProcessor(size=size, do_normalize=False)


def hf_model(model_type: str, seed: int = 0, masks: bool = False, **changes: Any) -> torch.nn.Module:
    """transformers' model of a tiny config (its instance segmentation model with masks)."""
    import transformers

    config = transformers.CONFIG_MAPPING[model_type](**{**tiny_config(model_type), **changes})
    torch.manual_seed(seed)
    family = FAMILIES[model_type]
    model = getattr(transformers, family.segmentation_class if masks else family.detection_class)(config).eval()
    with torch.no_grad():  # transformers starts its linear layers at std 0.01, its class heads at zero with
        for name, parameter in model.named_parameters():  # constant biases, and some batch-norm scales near
            if parameter.dim() > 1:  # 0.01: every feature then equals its bias, and the encoder's scores
                torch.nn.init.xavier_uniform_(parameter)  # tie. Drawn again as a trained model's vary
            elif name.endswith("bias"):
                parameter.copy_(torch.randn(parameter.shape) * 0.5)
        for module in model.modules():
            if isinstance(module, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.LayerNorm)) and \
                    module.weight is not None:
                module.weight.copy_(1 + 0.1 * torch.randn(module.weight.shape))
    return model


def family_folder(model_type: str, folder: Path, seed: int = 0, with_processor: bool = True,
                  masks: bool = False, **changes: Any) -> torch.nn.Module:
    """A random-weight folder as a user's would be (config.json, model.safetensors and
    preprocessor_config.json); returns transformers' model of it."""
    model = hf_model(model_type, seed, masks, **changes)
    model.save_pretrained(folder)
    if with_processor:
        processor(model_type).save_pretrained(folder)
    return model


def assert_same_detections(ours: dict, theirs: dict, score_tol: float = 1e-4, box_tol: float = 0.05) -> None:
    """The same detections ({"scores", "labels", "boxes"} lists), in any order among near-equal
    scores (a random model saturates many sigmoids at 1.0, and top-k orders ties as it likes):
    each of ours pairs with one of theirs of its label, score and box within the tolerances."""
    theirs_rows = [(s, c, np.asarray(b)) for s, c, b in zip(theirs["scores"], theirs["labels"], theirs["boxes"])]
    assert len(ours["scores"]) == len(theirs_rows) > 0
    for s, label, b in zip(ours["scores"], ours["labels"], ours["boxes"]):
        match = next((k for k, (ts, tl, tb) in enumerate(theirs_rows)
                      if tl == label and abs(ts - s) <= score_tol and np.abs(tb - np.asarray(b)).max() <= box_tol), None)
        assert match is not None, f"no match for score {s}, label {label}, box {b}"
        theirs_rows.pop(match)
