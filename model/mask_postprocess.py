"""The mask head's outputs as an image's masks (PostProcessSegm) and as a panoptic segmentation
(PostProcessPanoptic): the reference's rules, in torch alone.

A panoptic segmentation is one segment id per pixel (COCO panoptic's PNG stores id as
R + 256 G + 256^2 B: pipeline/panoptic.py) and a segments_info entry per id.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

MIN_SEGMENT_AREA = 4  # pixels: a segment this small or smaller is dropped and the rest re-assigned


def image_masks(logits: torch.Tensor, padded: tuple[int, int], fed: tuple[int, int], original: tuple[int, int],
                threshold: float = 0.5) -> torch.Tensor:
    """One image's masks [k,H,W] uint8 at its original size from its queries' mask logits
    [k,h,w]: upsampled (bilinear) to the padded batch (or canvas) it was fed in, thresholded,
    cropped to the image as fed, resized (nearest) to the original size (the reference's rule)."""
    masks = F.interpolate(logits[:, None].float(), size=padded, mode="bilinear", align_corners=False)[:, 0]
    cropped = (masks.sigmoid() > threshold)[:, :fed[0], :fed[1]]
    # nearest on uint8: the reference's values, a quarter of float32's memory at the original size
    return F.interpolate(cropped[:, None].to(torch.uint8), size=original, mode="nearest")[:, 0]


def resized_masks(logits: torch.Tensor, padded: tuple[int, int], fed: tuple[int, int], original: tuple[int, int]
                  ) -> torch.Tensor:
    """The descendants' rule (transformers' post_process_instance_segmentation, binary maps, for
    RF-DETR): each query's mask logits [k,h,w], which cover the fixed-size input and so the whole
    image, upsampled (bilinear) straight to the original size and kept where positive. uint8
    [k,H,W]; padded and fed are image_masks' (no padding here: fed is the canvas)."""
    if fed != padded:
        raise ValueError(f"resized_masks takes unpadded inputs: fed {fed}, canvas {padded}")
    masks = F.interpolate(logits[:, None].float(), size=original, mode="bilinear", align_corners=False)[:, 0]
    return (masks > 0).to(torch.uint8)


class PostProcessSegm(nn.Module):
    """Each query's mask at its image's original size (image_masks). results: PostProcess's, one
    dict per image, gains "masks" [Q,1,H,W] uint8."""

    def __init__(self, threshold: float = 0.5) -> None:
        super().__init__()
        self.threshold = threshold

    @torch.no_grad()
    def forward(self, results: list[dict], outputs: dict, orig_target_sizes: torch.Tensor,
                max_target_sizes: torch.Tensor) -> list[dict]:
        padded = tuple(max_target_sizes.max(0)[0].tolist())
        for result, logits, fed, original in zip(results, outputs["pred_masks"], max_target_sizes.tolist(),
                                                 orig_target_sizes.tolist()):
            result["masks"] = image_masks(logits, padded, tuple(fed), tuple(original), self.threshold).cpu()[:, None]
        return results


class PostProcessPanoptic(nn.Module):
    """Queries whose best class is an object with a score above threshold each claim the pixels
    where their mask is the highest (masks of one stuff class merged); segments of at most
    MIN_SEGMENT_AREA pixels are dropped and the pixels re-assigned, until none is. Returns per
    image {"id_map": [H,W] int64 at the target size, "segments_info": [{id, isthing,
    category_id, area}]}."""

    def __init__(self, is_thing_map: dict[int, bool], threshold: float = 0.85) -> None:
        super().__init__()
        self.is_thing_map, self.threshold = is_thing_map, threshold

    @torch.no_grad()
    def forward(self, outputs: dict, processed_sizes: torch.Tensor,
                target_sizes: torch.Tensor | None = None) -> list[dict]:
        target_sizes = processed_sizes if target_sizes is None else target_sizes
        no_object = outputs["pred_logits"].shape[-1] - 1
        return [self.segment(logits, masks, no_object, tuple(size.tolist()), tuple(target.tolist()))
                for logits, masks, size, target in zip(outputs["pred_logits"], outputs["pred_masks"],
                                                        processed_sizes, target_sizes)]

    def segment(self, logits: torch.Tensor, masks: torch.Tensor, no_object: int, size: tuple[int, int],
                target: tuple[int, int], padded: tuple[int, int] | None = None) -> dict:
        """One image. padded: the padded batch (or canvas) the masks cover, whose top-left `size`
        is the image; the reference's default (None) takes them to cover the image alone."""
        scores, classes = logits.float().softmax(-1).max(-1)
        keep = classes.ne(no_object) & (scores > self.threshold)
        scores, classes = scores[keep], classes[keep]
        masks = F.interpolate(masks[keep][:, None].float(), padded or size, mode="bilinear", align_corners=False)[:, 0]
        masks = masks[:, :size[0], :size[1]].flatten(1)
        stuff = defaultdict(list)  # stuff class -> its queries, merged into one segment
        for k, label in enumerate(classes.tolist()):
            if not self.is_thing_map[label]:
                stuff[label].append(k)
        id_map, area = self.assign(masks, size, target, list(stuff.values()))
        while len(classes):
            small = torch.tensor([a <= MIN_SEGMENT_AREA for a in area], dtype=torch.bool)
            if not small.any():
                break
            scores, classes, masks = scores[~small], classes[~small], masks[~small]
            id_map, area = self.assign(masks, size, target, [])  # the reference merges stuff only once
        segments = [{"id": i, "isthing": self.is_thing_map[c], "category_id": c, "area": a}
                    for i, (c, a) in enumerate(zip(classes.tolist(), area))]
        return {"id_map": id_map, "segments_info": segments}

    @staticmethod
    def assign(masks: torch.Tensor, size: tuple[int, int], target: tuple[int, int],
               merged: list[list[int]]) -> tuple[torch.Tensor, list[int]]:
        """Each pixel's segment (the query whose mask is highest there; each group of `merged`
        takes its first's id), resized to target, and each query's area there."""
        h, w = size
        if masks.shape[0] == 0:
            ids = torch.zeros((h, w), dtype=torch.long)
        else:
            ids = masks.transpose(0, 1).softmax(-1).argmax(-1).view(h, w)
        for group in merged:
            for k in group[1:]:
                ids = ids.masked_fill(ids.eq(k), group[0])
        # Pillow's nearest resize, as the reference resizes its PNG: torch's nearest modes pick
        # other source pixels where the scale is not an integer
        resized = Image.fromarray(ids.cpu().numpy().astype(np.int32)).resize(target[::-1], Image.Resampling.NEAREST)
        ids = torch.from_numpy(np.asarray(resized).astype(np.int64))
        return ids, [int(ids.eq(i).sum()) for i in range(masks.shape[0])]
