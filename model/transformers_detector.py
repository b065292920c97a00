"""A transformers detection model (RT-DETR, D-FINE, ...) behind the project's model interface.

forward(pixels, mask) returns DETR's outputs (pred_logits, pred_boxes); forward(pixels, mask,
targets) returns the family's own loss terms (denoising groups, VFL, FGL/DDF: transformers'
code), with two things transformers does not do:

- the loss normalised across data-parallel ranks. transformers' criteria divide each term by the
  number of boxes on their own rank; a term that is a sum over boxes divided by them is rescaled
  by local boxes / mean boxes per rank (an all-reduce), so that the gradients averaged over ranks
  are those of one device seeing every rank's batch. Terms that are per-rank means by design
  (Family.per_rank_terms: D-FINE's DDF) stay as they are;
- the loss in float32 under bf16 autocast: the criterion runs with autocast off on float32
  inputs, as DETR's heads and criterion do (model/precision.py), since the focal terms' logs and
  exponentials are what overflow in half precision.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from .families import FamilyConfig


def quiet_transformers() -> None:
    """transformers' progress bars (loading and writing weights) say nothing to a job's user."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def hf_config(config: FamilyConfig) -> Any:
    from transformers import CONFIG_MAPPING

    return CONFIG_MAPPING[config.model_type].from_dict(dict(config.hf))


def family_config(hf: Any) -> FamilyConfig:
    """transformers' config -> FamilyConfig (its dict, without the fields that vary by version)."""
    d = hf.to_dict()
    for key in ("transformers_version", "architectures", "_name_or_path", "dtype", "torch_dtype"):
        d.pop(key, None)
    return FamilyConfig(hf.model_type, d)


class TransformersDetector(nn.Module):
    """transformers' `<Family>ForObjectDetection` as `model`; `config` the FamilyConfig;
    `contract` the input contract it runs with (set by the loader)."""

    def __init__(self, config: FamilyConfig, hf_model: nn.Module | None = None):
        super().__init__()
        import transformers

        quiet_transformers()
        self.config = config
        self.contract = None
        self.model = hf_model if hf_model is not None else \
            getattr(transformers, config.family.detection_class)(hf_config(config))
        self.model.loss_function = RankNormalisedLoss(self.model.loss_function, config.family.per_rank_terms)

    def forward(self, pixels: torch.Tensor, mask: torch.Tensor | None = None,
                targets: list[dict[str, torch.Tensor]] | None = None) -> dict[str, Any]:
        """pixels [B,3,H,W] as the contract makes them; mask [B,H,W] True on padding."""
        pixel_mask = None if mask is None else (~mask).long()
        if targets is None:
            out = self.model(pixel_values=pixels, pixel_mask=pixel_mask)
            return {"pred_logits": out.logits, "pred_boxes": out.pred_boxes}
        labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
        out = self.model(pixel_values=pixels, pixel_mask=pixel_mask, labels=labels)
        return {"loss": out.loss, **out.loss_dict}


class RankNormalisedLoss:
    """transformers' loss function of a family, in float32 and normalised across ranks (above)."""

    def __init__(self, loss_function: Callable, per_rank_terms: tuple[str, ...]):
        self.loss_function, self.per_rank_terms = loss_function, per_rank_terms

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor], Any]:
        labels = kwargs["labels"] if "labels" in kwargs else args[1]
        device = labels[0]["boxes"].device if labels else torch.device("cpu")
        with torch.autocast(device.type, enabled=False):
            args, kwargs = _float32((args, kwargs))
            loss, terms, auxiliary = self.loss_function(*args, **kwargs)
        scale = box_share(sum(len(t["class_labels"]) for t in labels), device)
        if scale == 1.0:
            return loss, terms, auxiliary
        # The total is transformers' (some families weight the terms there, not in the dict); the
        # per-rank terms are weighted in the dict by the families that have them (D-FINE, DEIMv2).
        per_rank = [v for k, v in terms.items() if k.startswith(self.per_rank_terms)] if self.per_rank_terms else []
        loss = scale * loss + (1 - scale) * sum(per_rank, torch.zeros((), device=loss.device))
        terms = {k: v if k.startswith(self.per_rank_terms) else v * scale for k, v in terms.items()}
        return loss, terms, auxiliary


def box_share(local_boxes: int, device: torch.device) -> float:
    """This rank's boxes over the mean per rank (each clamped at 1, as transformers clamps): what a
    term divided by the local count is multiplied by to be divided by the global mean instead."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return 1.0
    total = torch.tensor([float(local_boxes)], device=device)
    dist.all_reduce(total)
    return max(local_boxes, 1) / max(total.item() / dist.get_world_size(), 1.0)


def _float32(tree: Any) -> Any:
    if isinstance(tree, torch.Tensor):
        return tree.float() if tree.is_floating_point() else tree
    if isinstance(tree, (list, tuple)):
        return type(tree)(_float32(t) for t in tree)
    if isinstance(tree, dict):
        return {k: _float32(v) for k, v in tree.items()}
    return tree
