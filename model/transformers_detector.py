"""A transformers detection model (RT-DETR, D-FINE, ...) behind the project's model interface.

forward(pixels, mask) returns DETR's outputs (pred_logits, pred_boxes, and pred_masks for an
instance segmentation model); forward(pixels, mask, targets) returns the family's own loss terms
(denoising groups, VFL, FGL/DDF, mask terms: transformers' code), with two things transformers
does not do:

- the loss normalised across data-parallel ranks. Most of transformers' criteria divide each term
  by the number of boxes on their own rank; a term that is a sum over boxes divided by them is
  rescaled by local boxes / mean boxes per rank (an all-reduce), so that the gradients averaged
  over ranks are those of one device seeing every rank's batch. Terms that are per-rank means by
  design (Family.per_rank_terms: D-FINE's DDF) stay as they are, and so do the criteria that
  reduce the count themselves (Family.normalised_across_ranks: LW-DETR, RF-DETR);
- the loss in float32 under bf16 autocast: the criterion runs with autocast off on float32
  inputs, as DETR's heads and criterion do (model/precision.py), since the focal terms' logs and
  exponentials are what overflow in half precision.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .families import Family, FamilyConfig
from .network import DetectionNetwork


def quiet_transformers() -> None:
    """transformers' progress bars (loading and writing weights) say nothing to a job's user."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def hf_config(config: FamilyConfig) -> Any:
    from transformers import CONFIG_MAPPING

    return CONFIG_MAPPING[config.model_type].from_dict(dict(config.hf))


def family_config(hf: Any, masks: bool = False) -> FamilyConfig:
    """transformers' config -> FamilyConfig (its dict, without the fields that vary by version)."""
    d = hf.to_dict()
    for key in ("transformers_version", "architectures", "_name_or_path", "dtype", "torch_dtype"):
        d.pop(key, None)
    return FamilyConfig(hf.model_type, d, masks)


class TransformersDetector(DetectionNetwork):
    """transformers' `<Family>ForObjectDetection` (or `ForInstanceSegmentation`) as `model`;
    `config` the FamilyConfig; `contract` the input contract it runs with (set by the loader)."""

    config: FamilyConfig
    model: Any  # transformers' model class (typed loosely: its loss_function is replaced)

    def __init__(self, config: FamilyConfig, hf_model: nn.Module | None = None):
        super().__init__()
        import transformers

        quiet_transformers()
        self.config = config
        self.contract = None
        self.model = hf_model if hf_model is not None else \
            getattr(transformers, config.model_class)(hf_config(config))
        self.model.loss_function = RankNormalisedLoss(self.model.loss_function, config.family)

    def forward(self, pixels: torch.Tensor, mask: torch.Tensor | None = None,
                targets: list[dict[str, torch.Tensor]] | None = None) -> dict[str, Any]:
        """pixels [B,3,H,W] as the contract makes them; mask [B,H,W] True on padding; targets
        with "masks" [n,h,w] (at any size: the mask terms sample them at relative points) for an
        instance segmentation model."""
        pixel_mask = None if mask is None else (~mask).long()
        if targets is None:
            out = self.model(pixel_values=pixels, pixel_mask=pixel_mask)
            found = {"pred_logits": out.logits, "pred_boxes": out.pred_boxes}
            return {**found, "pred_masks": out.pred_masks} if self.config.masks else found
        labels = [{"class_labels": t["labels"], "boxes": t["boxes"],
                   **({"masks": t["masks"]} if self.config.masks else {})} for t in targets]
        out = self.model(pixel_values=pixels, pixel_mask=pixel_mask, labels=labels)
        return {"loss": out.loss, **out.loss_dict}


class RankNormalisedLoss:
    """transformers' loss function of a family, in float32 and normalised across ranks (above)."""

    def __init__(self, loss_function: Callable, family: Family):
        self.loss_function, self.family = loss_function, family

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor], Any]:
        labels = kwargs["labels"] if "labels" in kwargs else args[1]
        device = labels[0]["boxes"].device if labels else torch.device("cpu")
        unions: list[int] = []
        with torch.autocast(device.type, enabled=False), counting_unions(self.family, unions):
            args, kwargs = _float32((args, kwargs))
            loss, terms, auxiliary = self.loss_function(*args, **kwargs)
        if self.family.normalised_across_ranks:
            return loss, terms, auxiliary
        boxes = sum(len(t["class_labels"]) for t in labels)
        scale, union_scale = box_shares([boxes, unions[-1] if unions else boxes], device)
        per_term = {k: self.term_scale(k, scale, union_scale) for k in terms}
        if all(s == 1.0 for s in per_term.values()):
            return loss, terms, auxiliary
        # The total is transformers' (some families weight the terms there, not in the dict); the
        # families whose terms scale otherwise (per-rank, union) weight them in the dict (D-FINE, DEIMv2).
        loss = scale * loss + sum(((s - scale) * terms[k] for k, s in per_term.items() if s != scale),
                                  torch.zeros((), device=loss.device))
        return loss, {k: v * per_term[k] for k, v in terms.items()}, auxiliary

    def term_scale(self, term: str, scale: float, union_scale: float) -> float:
        """What a loss term is multiplied by: 1 for a per-rank term, the union matches' share for
        a term divided by them (not the denoising ones: those divide by boxes), else the boxes'."""
        if self.family.per_rank_terms and term.startswith(self.family.per_rank_terms):
            return 1.0
        if self.family.union_terms and term.startswith(self.family.union_terms) and "_dn_" not in term:
            return union_scale
        return scale


@contextmanager
def counting_unions(family: Family, counts: list[int]) -> Iterator[None]:
    """DEIMv2's dense one-to-one matching divides its box terms by the matches of every decoder
    layer taken together on this rank (num_boxes_go), which its authors all-reduce across ranks
    and transformers does not; nothing outside its criterion sees that count, so it is recorded
    from the criterion's own method while the loss runs."""
    if not family.union_terms:
        yield
        return
    from transformers.loss.loss_deimv2 import Deimv2Loss

    original = Deimv2Loss._get_dense_o2o_indices

    def recording(criterion: Any, *args: Any) -> Any:
        found = original(criterion, *args)
        counts.append(sum(len(rows) for rows, _ in found))
        return found

    setattr(Deimv2Loss, "_get_dense_o2o_indices", recording)  # noqa: B010 (a method replaced while the loss runs)
    try:
        yield
    finally:
        setattr(Deimv2Loss, "_get_dense_o2o_indices", original)  # noqa: B010


def box_shares(local: list[int], device: torch.device) -> list[float]:
    """Each count of this rank over its mean per rank (each clamped at 1, as transformers clamps):
    what a term divided by the local count is multiplied by to be divided by the global mean
    instead. One all-reduce."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [1.0] * len(local)
    total = torch.tensor([float(n) for n in local], device=device)
    dist.all_reduce(total)
    return [max(n, 1) / max(t / dist.get_world_size(), 1.0) for n, t in zip(local, total.tolist())]


def _float32(tree: Any) -> Any:
    if isinstance(tree, torch.Tensor):
        return tree.float() if tree.is_floating_point() else tree
    if isinstance(tree, (list, tuple)):
        return type(tree)(_float32(t) for t in tree)
    if isinstance(tree, dict):
        return {k: _float32(v) for k, v in tree.items()}
    return tree
