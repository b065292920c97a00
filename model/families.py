"""The DETR descendants, run through transformers' model classes: which families, their input
contracts, and the small presets that train from scratch on a CPU.

The project's own DETR (model/detr.py) runs `detr` folders and reference `.pth` files; every other
listed `model_type` is transformers' class behind the same interface (model/interface.py,
model/transformers_detector.py). What a family differs in lives here and in its contract, never
in a job: a fixed-size resize without padding (RT-DETR, D-FINE, DEIMv2), a size divisible by the
backbone's windows (RF-DETR, LW-DETR), sigmoid scores with top-k, the processor's mean/std or none.
Light to import: no torch, no transformers.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .config import PRESETS
from .contract import IMAGENET_MEAN, IMAGENET_STD, InputContract

NO_NORMALISATION: dict[str, Any] = {"image_mean": (0.0, 0.0, 0.0), "image_std": (1.0, 1.0, 1.0)}
# A hub model id, org/name, read as one where no such local path exists (a missing file such as
# runs/x.pt is never looked up on the hub)
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(?<!\.pt)(?<!\.pth)(?<!\.bin)(?<!\.onnx)(?<!\.pt2)")


@dataclass(frozen=True)
class Family:
    model_type: str  # config.json's
    detection_class: str  # transformers' class for boxes
    contract: InputContract  # what a folder without preprocessor_config.json gets (the authors' default)
    per_rank_terms: tuple[str, ...] = ()  # loss terms that are per-rank means, not sums over boxes
    top_k: int | None = None  # (query, class) pairs kept per image; None: the number of queries
    processor: str = "RTDetrImageProcessor"  # transformers' image processor of its folders
    segmentation_class: str | None = None  # transformers' class for instance masks, where it has one
    # transformers' loss already divides by the mean box count over ranks (an all-reduce of its own)
    normalised_across_ranks: bool = False
    # loss terms divided by the matches of all decoder layers together (DEIMv2's dense one-to-one)
    union_terms: tuple[str, ...] = ()


_DETR_STYLE = InputContract()  # shortest side 800, longest 1333, ImageNet mean/std, padded
_RT_DETR_STYLE = InputContract(min_size=640, max_size=640, fixed_size=(640, 640), **NO_NORMALISATION)

FAMILIES: dict[str, Family] = {f.model_type: f for f in (
    Family("rt_detr", "RTDetrForObjectDetection", _RT_DETR_STYLE),
    Family("rt_detr_v2", "RTDetrV2ForObjectDetection", _RT_DETR_STYLE),
    Family("d_fine", "DFineForObjectDetection", _RT_DETR_STYLE, per_rank_terms=("loss_ddf",)),
    Family("deimv2", "Deimv2ForObjectDetection", _RT_DETR_STYLE, per_rank_terms=("loss_ddf",),
           union_terms=("loss_bbox", "loss_giou", "loss_fgl")),
    Family("rf_detr", "RfDetrForObjectDetection",
           InputContract(min_size=560, max_size=560, fixed_size=(560, 560), antialias=False),
           processor="RfDetrImageProcessor", segmentation_class="RfDetrForInstanceSegmentation",
           normalised_across_ranks=True),
    Family("lw_detr", "LwDetrForObjectDetection",
           InputContract(min_size=640, max_size=640, fixed_size=(640, 640)), processor="DeformableDetrImageProcessor",
           normalised_across_ranks=True),
    Family("deformable_detr", "DeformableDetrForObjectDetection", _DETR_STYLE, top_k=100,
           processor="DeformableDetrImageProcessor"),
    Family("conditional_detr", "ConditionalDetrForObjectDetection", _DETR_STYLE, top_k=100,
           processor="ConditionalDetrImageProcessor"),
)}
SUPPORTED = ("detr", *FAMILIES)  # the model types a folder may be


def unsupported(model_type: Any, source: str) -> str:
    return (f"{source}: model_type {model_type!r} is not supported; the supported ones are "
            f"{', '.join(SUPPORTED)}")


@dataclass(frozen=True)
class FamilyConfig:
    """A transformers family's model: its model_type and transformers' config as a dict (what
    config.json holds), and whether it is the family's instance segmentation model (masks).
    Plays DetrConfig's part in checkpoints, actors and jobs."""

    model_type: str
    hf: dict[str, Any] = field(default_factory=dict)
    masks: bool = False

    def __post_init__(self) -> None:
        if self.model_type not in FAMILIES:
            raise ValueError(unsupported(self.model_type, "config"))
        if self.masks and self.family.segmentation_class is None:
            raise ValueError(f"{self.model_type} has no mask head; instance masks are DETR's and rf_detr's")

    @property
    def model_class(self) -> str:
        """transformers' class of this model: the family's boxes, or its instance masks."""
        return self.family.segmentation_class if self.masks else self.family.detection_class  # type: ignore[return-value]

    @property
    def family(self) -> Family:
        return FAMILIES[self.model_type]

    @property
    def num_classes(self) -> int:
        """Class logits: label i is category id i (as DETR's, without "no object")."""
        if "id2label" in self.hf:
            return len(self.hf["id2label"])
        return int(self.hf.get("num_labels", 2))  # transformers' default

    @property
    def num_queries(self) -> int:
        return int(self.hf.get("num_queries", 300))

    @property
    def top_k(self) -> int:
        """Detections kept per image at most, as the family's authors keep them."""
        return self.family.top_k or self.num_queries

    stuff_classes: ClassVar[tuple[int, ...]] = ()  # panoptic output is DETR's

    def replace(self, masks: bool | None = None, **hf_changes: Any) -> FamilyConfig:
        """With other transformers config fields (and masks, where given)."""
        hf = {**self.hf, **hf_changes}
        if "num_labels" in hf_changes:  # transformers derives the label maps from it
            hf.pop("id2label", None)
            hf.pop("label2id", None)
        return dataclasses.replace(self, hf=hf, masks=self.masks if masks is None else masks)

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.model_type, "hf": self.hf, **({"masks": True} if self.masks else {})}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FamilyConfig:
        return cls(d["family"], dict(d["hf"]), bool(d.get("masks", False)))

    def describe(self) -> str:
        masks = ", instance masks" if self.masks else ""
        return f"{self.model_type} ({self.num_classes} classes, {self.num_queries} queries{masks})"


def is_family_dict(d: dict[str, Any]) -> bool:
    return "family" in d


def contract_of_processor(processor: dict[str, Any] | None, family: Family, source: str) -> tuple[InputContract, list[str]]:
    """The input contract of a folder's preprocessor_config.json (transformers' image processor
    settings), or the family's default where the folder has none; and what was said about it."""
    if processor is None:
        return family.contract, [f"{source} has no preprocessor_config.json: using {family.model_type}'s default "
                                 f"input contract, {family.contract.describe()}"]
    if processor.get("do_rescale", True) and abs(float(processor.get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-9:
        raise ValueError(f"{source}/preprocessor_config.json: rescale_factor {processor['rescale_factor']} is not "
                         "1/255; pixels are scaled to [0, 1]")
    size = processor.get("size") or {}
    normalise = (dict(image_mean=tuple(processor.get("image_mean", IMAGENET_MEAN)),
                      image_std=tuple(processor.get("image_std", IMAGENET_STD)))
                 if processor.get("do_normalize", True) else NO_NORMALISATION)
    if not processor.get("do_resize", True):
        raise ValueError(f"{source}/preprocessor_config.json: do_resize is false; the pipeline needs a size")
    if "height" in size and "width" in size:
        h, w = int(size["height"]), int(size["width"])
        contract = InputContract(min_size=min(h, w), max_size=max(h, w), fixed_size=(h, w), **normalise)
    elif "shortest_edge" in size:
        contract = InputContract(min_size=int(size["shortest_edge"]),
                                 max_size=int(size.get("longest_edge", size["shortest_edge"])), **normalise)
    else:
        raise ValueError(f"{source}/preprocessor_config.json: size {size} is neither height/width nor "
                         "shortest_edge/longest_edge")
    return dataclasses.replace(contract, antialias=family.contract.antialias), []


def processor_of_contract(family: Family, contract: InputContract) -> dict[str, Any]:
    """preprocessor_config.json of a folder that runs with this contract (contract_of_processor's inverse)."""
    size = ({"height": contract.fixed_size[0], "width": contract.fixed_size[1]} if contract.fixed_size else
            {"shortest_edge": contract.min_size, "longest_edge": contract.max_size})
    normalise = tuple(contract.image_mean) != (0.0, 0.0, 0.0) or tuple(contract.image_std) != (1.0, 1.0, 1.0)
    return {"image_processor_type": family.processor, "do_resize": True, "size": size, "resample": 2,
            "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": normalise,
            "image_mean": list(contract.image_mean), "image_std": list(contract.image_std),
            "do_pad": contract.fixed_size is None}


def check_window(config: FamilyConfig, contract: InputContract, source: str) -> None:
    """RF-DETR and LW-DETR attend within windows of the backbone's patches: the input's sides
    must be multiples of patch size x windows."""
    backbone = config.hf.get("backbone_config") or {}
    patch, windows = backbone.get("patch_size"), backbone.get("num_windows")
    if not (patch and windows):
        return
    # RF-DETR's num_windows is per side; LW-DETR's is the total, a perfect square
    per_side = int(windows) if config.model_type == "rf_detr" else math.isqrt(int(windows))
    block = int(patch) * per_side
    sides = contract.fixed_size or (contract.min_size, contract.max_size)
    if any(side % block for side in sides):
        raise ValueError(f"{source}: input size {sides[0]}x{sides[1]} is not divisible by {block} (patch size {patch}"
                         f" x {windows} windows of its backbone); choose sides that are multiples of {block}")


# Small presets trained from scratch on a CPU (tests, demos, bench/learning.py): transformers'
# configs with narrow backbones and two decoder layers, at the synthetic shapes' size.
_TINY_HEAD = dict(encoder_hidden_dim=64, encoder_in_channels=[64, 128, 256], encoder_ffn_dim=128,
                  encoder_attention_heads=4, d_model=64, decoder_in_channels=[64, 64, 64], decoder_ffn_dim=128,
                  decoder_layers=2, decoder_attention_heads=4, num_queries=30, num_denoising=30,
                  anchor_image_size=None)
_TINY_CONTRACT = InputContract(min_size=192, max_size=192, fixed_size=(192, 192), **NO_NORMALISATION)
FAMILY_PRESETS: dict[str, tuple[FamilyConfig, InputContract]] = {
    "rtdetr-tiny": (FamilyConfig("rt_detr_v2", {
        **_TINY_HEAD,
        "backbone_config": {"model_type": "rt_detr_resnet", "embedding_size": 32, "hidden_sizes": [32, 64, 128, 256],
                            "depths": [1, 1, 1, 1], "layer_type": "basic", "downsample_in_bottleneck": False,
                            "out_features": ["stage2", "stage3", "stage4"], "out_indices": [2, 3, 4]},
        "freeze_backbone_batch_norms": False}), _TINY_CONTRACT),
    "dfine-tiny": (FamilyConfig("d_fine", {
        **_TINY_HEAD,
        "backbone_config": {"model_type": "hgnet_v2", "stem_channels": [3, 16, 16], "hidden_sizes": [32, 64, 128, 256],
                            "stage_in_channels": [16, 32, 64, 128], "stage_mid_channels": [16, 32, 64, 128],
                            "stage_out_channels": [32, 64, 128, 256], "stage_num_blocks": [1, 1, 1, 1],
                            "stage_numb_of_layers": [2, 2, 2, 2], "stage_downsample": [False, True, True, True],
                            "stage_light_block": [False, False, True, True], "stage_kernel_size": [3, 3, 5, 5],
                            "out_features": ["stage2", "stage3", "stage4"], "out_indices": [2, 3, 4]},
        "freeze_backbone_batch_norms": False}), _TINY_CONTRACT),
}
# Every preset a run may name: the DETR ones, then the families' small ones
PRESET_NAMES = sorted(PRESETS) + sorted(FAMILY_PRESETS)
