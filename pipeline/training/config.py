"""TrainConfig: the settings of one training run, the recipe of its preset included, and
AugmentConfig, the sizes of its augmentation (training/augment.py). Light to import: Ray
Train's controller unpickles these without the loop's imports (training/entry.py)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace
from typing import Any

from model import InputContract

from ..evaluation.backends import DEFAULT_BACKEND
from ..paths import with_absolute_paths
from .tracking import tracking_uri

# The settings a preset's recipe decides, with the paper's values (made for a pretrained backbone).
PAPER_RECIPE: dict[str, Any] = {"lr": 1e-4, "lr_backbone": 1e-5, "warmup_steps": 0, "encoder_matches": 1,
                                "batch_size": 4}
# Presets trained from scratch, where they differ from the paper's. Measured with bench/learning.py;
# see bench/README.md, `learning`.
RECIPES: dict[str, dict[str, Any]] = {
    "detr-tiny": {"lr": 3e-4, "lr_backbone": 3e-4, "warmup_steps": 200, "encoder_matches": 4, "batch_size": 8},
    "rtdetr-tiny": {"lr": 3e-4, "lr_backbone": 3e-4, "warmup_steps": 200, "batch_size": 8},
    "dfine-tiny": {"lr": 3e-4, "lr_backbone": 3e-4, "warmup_steps": 200, "batch_size": 8},
}


@dataclass(frozen=True)
class AugmentConfig:
    scales: tuple[int, ...] = tuple(range(480, 801, 32))  # shorter side, chosen at random
    max_size: int = 1333  # longer side cap
    crop_resize: tuple[int, ...] = (400, 500, 600)  # resize before the random crop
    crop_size: tuple[int, int] = (384, 600)  # crop sides drawn in this range
    val_size: int = 800
    hflip: float = 0.5

    def scaled(self, factor: float) -> AugmentConfig:
        """Every size multiplied by factor (e.g. 0.25 for ~200 px synthetic images)."""
        s = lambda v: max(1, int(round(v * factor)))  # noqa: E731
        return replace(
            self,
            scales=tuple(sorted({s(v) for v in self.scales})),
            max_size=s(self.max_size),
            crop_resize=tuple(s(v) for v in self.crop_resize),
            crop_size=(s(self.crop_size[0]), s(self.crop_size[1])),
            val_size=s(self.val_size),
        )


@dataclass
class TrainConfig:
    """A run's settings. The recipe fields (PAPER_RECIPE's) left None are filled when the config
    is made: from the preset's recipe when it is trained from scratch (no `init`), else the
    paper's; a value given wins. The command line and a library call train alike."""

    annotations: str
    images: str
    storage: str
    name: str
    val_annotations: str | None = None
    val_images: str | None = None
    preset: str = "detr-tiny"
    model_overrides: dict[str, Any] = field(default_factory=dict)  # DetrConfig fields
    init: str | None = None  # checkpoint to fine-tune from (any load_checkpoint source)
    masks: bool = False  # the mask head too (model/segmentation.py), from the annotations' segmentations
    freeze_detr: bool = False  # with masks and a box model as init: train the mask head alone (the paper's)
    backbone_weights: str | None = None  # torchvision ResNet state_dict (ImageNet), path or s3://
    from_scratch: bool = False  # a paper preset without pretrained weights, deliberately
    epochs: int = 10
    batch_size: int | None = None  # per worker (recipe)
    workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    placement: str = "PACK"  # of the workers over nodes: PACK, SPREAD or STRICT_SPREAD (one per node)
    data_cpus: float = 0.5  # per Ray Data decode/augment task
    lr: float | None = None  # of the transformer and heads (recipe)
    lr_backbone: float | None = None  # (recipe)
    weight_decay: float = 1e-4
    clip_max_norm: float = 0.1
    lr_drop: int = 200  # epochs between learning-rate drops
    lr_drop_gamma: float = 0.1
    warmup_steps: int | None = None  # linear learning-rate warm-up over the first optimizer steps (recipe)
    eos_coef: float = 0.1
    encoder_matches: int | None = None  # two-stage presets: proposals matched to each object (recipe)
    augment_scale: float = 1.0  # multiplies the paper's image sizes (480-800, max 1333)
    eval_every: int = 1
    eval_backend: str = DEFAULT_BACKEND  # COCO scorer of the validation passes (pipeline/evaluation)
    log_every: int = 100  # steps between progress lines (and at least one a minute)
    resource_wait_s: float | None = None  # for an autoscaler to add nodes; default 600 with GPUs, else 0
    max_failures: int = 0
    num_to_keep: int | None = 3  # the last checkpoints kept (None: all); the best is kept besides
    mlflow: str | None = None  # MLflow tracking URI (a folder is a local store); None: no MLflow
    seed: int = 0

    def __post_init__(self) -> None:
        recipe = {} if self.init else RECIPES.get(self.preset, {})
        for name, paper in PAPER_RECIPE.items():
            if getattr(self, name) is None:
                setattr(self, name, recipe.get(name, paper))

    @property
    def augment(self) -> AugmentConfig:
        return AugmentConfig().scaled(self.augment_scale)

    def contract(self, init: InputContract | None = None) -> InputContract:
        """The run's input contract: validation's sizes, the normalisation of the checkpoint it
        fine-tunes (`init`, when that records one), else ImageNet's. A fixed-size contract (a
        family's: RT-DETR, D-FINE, ...) is kept as it is: its model is made for that size."""
        if init is not None and init.fixed_size is not None:
            return init
        base = init or InputContract()
        return dataclasses.replace(base, min_size=self.augment.val_size, max_size=self.augment.max_size)

    def resolved(self) -> TrainConfig:
        """The config with its local paths absolute (pipeline/paths.py), as the workers, whose
        working directory is not the user's, must get them."""
        config = dataclasses.replace(self, mlflow=tracking_uri(self.mlflow)) if self.mlflow else self
        return with_absolute_paths(config, {"annotations": "--annotations", "images": "--images",
                                          "val_annotations": "--val-annotations", "val_images": "--val-images",
                                          "storage": "--storage", "init": "--init",
                                          "backbone_weights": "--backbone-weights"})

    def recipe(self) -> dict[str, Any]:
        """The recipe fields as this run uses them."""
        return {name: getattr(self, name) for name in PAPER_RECIPE}
