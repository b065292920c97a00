"""Training DETR with Ray Train across workers and nodes.

    config.py      TrainConfig: a run's settings, with its preset's recipe
    augment.py     the paper's box-aware augmentation
    stream.py      the data stream: records -> read, decode, augment (Ray Data tasks) -> batches
    loop.py        the training loop on each worker: build, restore, train, validate, report
    validation.py  validation: the detection path itself, scored as jobs/evaluate.py scores
    run.py         a run on the cluster: checks, TorchTrainer, the summary
    dry_run.py     `jobs/train.py --dry-run`: a run's inputs checked before anything starts
"""
from __future__ import annotations

from .config import PAPER_RECIPE, RECIPES, TrainConfig
from .dry_run import dry_run
from .loop import param_groups, train_step, warm_up
from .run import check_initialisation, fit, run_training
from .stream import augment_samples, collate, load_and_augment, records_of
from .validation import detect_images, gather, validate

__all__ = ["PAPER_RECIPE", "RECIPES", "TrainConfig", "augment_samples", "check_initialisation", "collate",
           "detect_images", "dry_run", "fit", "gather", "load_and_augment", "param_groups", "records_of",
           "run_training", "train_step", "validate", "warm_up"]
