"""DetrConfig: every construction argument of the network, and the named presets."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "small_cnn")
SMALL_CNN_WIDTHS = (16, 32, 64, 128)  # channels of small_cnn's four stages (model/backbone.py)
BACKBONE_NORMS = ("frozen_bn", "batch_norm", "group_norm")
LEGACY_FIELDS = ("image_mean", "image_std")  # now in the input contract (model/contract.py)


@dataclass(frozen=True)
class DetrConfig:
    """Construction arguments of DETR. Defaults are the paper's R50 model on COCO."""

    backbone: str = "resnet50"
    dilation: bool = False  # DC5: dilate the last ResNet stage (stride 16 instead of 32)
    # "frozen_bn" is the reference (ImageNet statistics frozen). Presets trained from
    # scratch may normalise with batch or group statistics instead; see docs/model.md.
    backbone_norm: str = "frozen_bn"
    # The reference freezes conv1 + layer1 (pretrained); from scratch they must learn too.
    train_stem: bool = False
    # ResNet stages used: 4 is the reference (stride 32); 3 stops at layer3 (stride 16,
    # a finer and cheaper feature map for small images, at the cost of layer4's depth).
    backbone_stages: int = 4
    # Zero the backbone's features on padding after every block (small_cnn only), so that
    # padding reads as the convolutions' own zero padding: an image's detections are then the
    # same alone, on a canvas or in any padded batch (docs/model.md, "Padding").
    masked_backbone: bool = False
    # Object queries chosen from the encoder's own box proposals (model/query_selection.py)
    # instead of the paper's learned embeddings: what lets a small DETR learn from scratch.
    two_stage: bool = False
    # With two_stage (ignored without): proposals overlapping a better one by more than this IoU
    # are skipped when choosing the queries (distinct queries, model/query_selection.py);
    # None: the plain top-k.
    distinct_query_iou: float | None = None
    hidden_dim: int = 256
    nheads: int = 8
    enc_layers: int = 6
    dec_layers: int = 6
    dim_feedforward: int = 2048
    dropout: float = 0.1
    num_queries: int = 100
    num_classes: int = 91  # max category id + 1; the head has num_classes + 1 logits
    aux_loss: bool = True
    # The paper's mask head (model/segmentation.py): the model is then DETRsegm, its DETR under
    # `detr.`, and also predicts a mask per query.
    masks: bool = False
    # Class ids that are stuff (regions: sky, road), not things; with the mask head, bulk detection
    # writes a panoptic segmentation per image when there are any (model/mask_postprocess.py).
    stuff_classes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone {self.backbone!r} is not one of {BACKBONES}")
        if self.backbone_norm not in BACKBONE_NORMS:
            raise ValueError(f"backbone_norm {self.backbone_norm!r} is not one of {BACKBONE_NORMS}")
        if self.dilation and self.backbone in ("resnet18", "resnet34", "small_cnn"):
            raise ValueError(f"dilation (DC5) needs a bottleneck ResNet, not {self.backbone}")
        if self.masked_backbone and self.backbone != "small_cnn":
            raise ValueError(f"masked_backbone needs the small_cnn backbone, not {self.backbone}")
        if self.backbone_stages not in (3, 4):
            raise ValueError(f"backbone_stages must be 3 or 4, got {self.backbone_stages}")
        if self.distinct_query_iou is not None and not 0 < self.distinct_query_iou <= 1:
            raise ValueError(f"distinct_query_iou must be in (0, 1], got {self.distinct_query_iou}")
        if self.hidden_dim % self.nheads or self.hidden_dim % 2:
            raise ValueError(f"hidden_dim {self.hidden_dim} must be even and divisible by nheads {self.nheads}")
        object.__setattr__(self, "stuff_classes", tuple(sorted(int(c) for c in self.stuff_classes)))
        if any(not 0 <= c < self.num_classes for c in self.stuff_classes):
            raise ValueError(f"stuff_classes must be class ids below num_classes {self.num_classes}")
        for name in ("num_classes", "num_queries", "enc_layers", "dec_layers", "dim_feedforward"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def backbone_channels(self) -> int:
        if self.backbone == "small_cnn":
            return SMALL_CNN_WIDTHS[self.backbone_stages - 1]
        last = 512 if self.backbone in ("resnet18", "resnet34") else 2048
        return last if self.backbone_stages == 4 else last // 2

    def replace(self, **changes: Any) -> DetrConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetrConfig:
        """The config of a dict; image_mean / image_std, which configs held before the input
        contract (model/contract.py) took them over, are ignored (they were always ImageNet's)."""
        d = {k: v for k, v in d.items() if k not in LEGACY_FIELDS}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown DetrConfig fields: {unknown}")
        return cls(**d)


PRESETS: dict[str, DetrConfig] = {
    "detr-r50": DetrConfig(),
    "detr-r101": DetrConfig(backbone="resnet101"),
    "detr-r50-dc5": DetrConfig(dilation=True),
    "detr-r101-dc5": DetrConfig(backbone="resnet101", dilation=True),
    # Small CPU preset for tests, demos and CI, trained from scratch (bench/README.md,
    # `learning`): a small plain CNN with batch norm, all of it trained, and two-stage queries.
    "detr-tiny": DetrConfig(
        backbone="small_cnn",
        backbone_norm="batch_norm",
        train_stem=True,
        masked_backbone=True,
        two_stage=True,
        distinct_query_iou=0.7,
        hidden_dim=128,
        nheads=8,
        enc_layers=2,
        dec_layers=2,
        dim_feedforward=512,
        dropout=0.0,
        num_queries=20,
    ),
}


def get_config(preset: str | DetrConfig, **overrides: Any) -> DetrConfig:
    """A preset by name (or a config as is), with fields overridden."""
    if isinstance(preset, DetrConfig):
        config = preset
    elif preset in PRESETS:
        config = PRESETS[preset]
    else:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    return config.replace(**overrides) if overrides else config
