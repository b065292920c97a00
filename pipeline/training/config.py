"""TrainConfig: the settings of one training run, the recipe of its preset included;
AugmentConfig, the sizes of its augmentation (training/augment.py); LoopInputs, what every
worker gets. Light to import: Ray Train's controller unpickles these without the loop's imports
(training/entry.py)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from typing import Any

from model.contract import InputContract
from model.families import PRESET_NAMES

from ..evaluation.scoring import BACKENDS, DEFAULT_BACKEND
from ..options import Check, above, at_least, check, option, with_absolute_paths
from .tracking import MlflowLog, tracking_uri

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


def recipe_help(text: str, name: str) -> str:
    """A recipe option's help: what it is, and where its default comes from."""
    presets = ", ".join(f"{preset} {recipe[name]:g}" for preset, recipe in RECIPES.items() if name in recipe)
    return f"{text} (default: the preset's recipe ({presets}) without --init, else the paper's {PAPER_RECIPE[name]:g})"


def recipe_option(text: str, name: str, check: Check) -> Any:
    """A recipe field: None when made, then the value TrainConfig's __post_init__ decides."""
    return option(None, help=recipe_help(text, name), check=check)


@dataclass
class TrainConfig:
    """A run's settings: each field that is an option is jobs/train.py's flag of that name (its
    help and check here, pipeline/options.py). The recipe fields (PAPER_RECIPE's) left None are
    filled when the config is made: from the preset's recipe when it is trained from scratch (no
    `init`), else the paper's; a value given wins. The command line, a --config file and a
    library call train alike."""

    annotations: str = option(help="COCO annotation JSON of the training split (path or s3://)", path=True)
    images: str = option(help="folder (or s3:// prefix) the file_names are relative to", path=True)
    storage: str = option(help="where runs and checkpoints live (path or s3://)", path=True)
    name: str = option(help="run name; the same name resumes that run")
    val_annotations: str | None = option(None, help="COCO JSON of a validation split: enables COCO AP reporting",
                                         path=True)
    val_images: str | None = option(None, help="image folder of the validation split", path=True)
    preset: str = option("detr-tiny", help=f"model preset: {', '.join(PRESET_NAMES)}")
    model_overrides: dict[str, Any] = option(factory=dict, file_only=True,
                                             help="DetrConfig fields over the preset's (num_queries: 10, ...)")
    init: str | None = option(None, help="checkpoint to fine-tune from: ours, a reference .pth, or a Hugging Face "
                              "folder", path=True)
    masks: bool = option(False, help="train the mask head too (segmentation), from the annotations' polygons or RLE")
    freeze_detr: bool = option(False, help="with --masks and a box model as --init: train the mask head alone (the "
                               "paper's recipe)")
    backbone_weights: str | None = option(None, metavar="FILE", path=True, help="a torchvision ResNet state_dict "
                                          "(ImageNet), path or s3://, loaded before training")
    from_scratch: bool = option(False, help="train a paper preset from random weights (otherwise refused without "
                                "--backbone-weights or --init)")
    backbone_norm: str | None = option(None, choices=("frozen_bn", "batch_norm", "group_norm"),
                                       help="override the preset's backbone normalisation")
    epochs: int = option(10, help="total epochs", check=at_least(1))
    batch_size: int = recipe_option("images per worker per step", "batch_size", at_least(1))
    workers: int = option(1, help="Ray Train workers (data parallel)", check=at_least(1))
    gpu: bool = option(False, help="one GPU per worker, bf16 autocast")
    cpus_per_worker: float = option(1.0, help="logical CPUs per worker", check=above(0))
    placement: str = option("PACK", choices=("PACK", "SPREAD", "STRICT_SPREAD"),
                            help="workers over nodes: PACK fills nodes, STRICT_SPREAD puts each on its own node")
    data_cpus: float = option(0.5, help="logical CPUs per decode/augment task", check=above(0))
    lr: float = recipe_option("learning rate of the transformer and heads", "lr", above(0))
    lr_backbone: float = recipe_option("learning rate of the backbone (0: frozen)", "lr_backbone", at_least(0))
    weight_decay: float = option(1e-4, help="AdamW's weight decay", check=at_least(0))
    clip_max_norm: float = option(0.1, help="gradient clipping (0: off)", check=at_least(0))
    lr_drop: int = option(200, check=at_least(1),
                          help="epochs between learning-rate drops (x0.1 each; lr_drop_gamma in a --config file)")
    lr_drop_gamma: float = option(0.1, file_only=True, help="the learning rate's factor at each drop",
                                  check=above(0))
    warmup_steps: int = recipe_option("optimizer steps of linear learning-rate warm-up", "warmup_steps",
                                             at_least(0))
    eos_coef: float = option(0.1, file_only=True, help="the no-object class's weight in the classification loss",
                             check=above(0))
    encoder_matches: int = recipe_option("two-stage presets: encoder proposals matched to each object",
                                                "encoder_matches", at_least(1))
    augment_scale: float = option(1.0, check=above(0), help="multiplies the paper's sizes (shorter side 480-800, max "
                                  "1333); e.g. 0.25 for ~200 px images")
    eval_every: int = option(1, help="epochs between validation passes", check=at_least(1))
    eval_backend: str = option(DEFAULT_BACKEND, choices=BACKENDS,
                               help="COCO scorer of the validation passes (the same numbers)")
    log_every: int = option(100, check=at_least(1),
                            help="steps between progress lines (there is one at least every minute)")
    resource_wait: float | None = option(None, metavar="SECONDS", check=at_least(0),
                                         help="wait this long for an autoscaler to add what the run needs (default "
                                         "600 with --gpu, else 0)")
    max_failures: int = option(0, help="worker-group restarts allowed (-1: no limit)", check=at_least(-1))
    keep: int | None = option(3, check=at_least(0),
                              help="the last checkpoints to keep (0 or none: all); the best by validation AP "
                              "is kept besides, in RUN/best/")
    mlflow: str | None = option(None, metavar="URI", help="also log to MLflow: a tracking server's URI or a local "
                                "folder (needs the mlflow extra); TensorBoard's files and curves.png are written "
                                "under the run folder either way")
    seed: int = option(0, help="seeds the model's initialisation and the data's order")

    def __post_init__(self) -> None:
        recipe = {} if self.init else RECIPES.get(self.preset, {})
        for name, paper in PAPER_RECIPE.items():
            if getattr(self, name) is None:
                setattr(self, name, recipe.get(name, paper))
        if self.keep == 0:
            self.keep = None
        if self.backbone_norm:
            self.model_overrides = {**self.model_overrides, "backbone_norm": self.backbone_norm}
        check(self)

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
        """The config with its local paths absolute (pipeline/options.py), as the workers, whose
        working directory is not the user's, must get them."""
        config = dataclasses.replace(self, mlflow=tracking_uri(self.mlflow)) if self.mlflow else self
        return with_absolute_paths(config)

    def recipe(self) -> dict[str, Any]:
        """The recipe fields as this run uses them."""
        return {name: getattr(self, name) for name in PAPER_RECIPE}


@dataclass
class LoopInputs:
    """What fit() hands every worker."""
    config: TrainConfig
    num_classes: int
    train_images: int
    train_records: Any  # object ref of the training records
    val_records: Any  # object ref of the validation records, or None: no validation
    run_folder: str  # RUN: its progress files, TensorBoard events and curves (watch.py)
    best_checkpoint: str  # RUN/best/checkpoint.pt: the checkpoint with the best validation AP so far
    mlflow: MlflowLog | None = None  # the run's MLflow run, with --mlflow
    stuff_classes: tuple[int, ...] = ()  # the training set's stuff categories (isthing 0)
