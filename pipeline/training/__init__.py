"""Training DETR with Ray Train across workers and nodes.

    config.py      TrainConfig: a run's settings, with its preset's recipe
    augment.py     the paper's box-aware augmentation
    stream.py      the data stream: records -> read, decode, augment (Ray Data tasks) -> batches
    step.py        one optimizer step and its learning rates (torch only)
    entry.py       the loop's entry point and inputs, as Ray Train's controller unpickles them
    loop.py        the training loop on each worker: build, restore, train, validate, report
    validation.py  validation: the detection path itself, scored as jobs/evaluate.py scores
    run.py         a run on the cluster: checks, TorchTrainer, the summary
    preflight.py   `jobs/train.py --dry-run`: a run's inputs checked before anything starts
    watch.py       what rank 0 keeps for the people watching: progress files, TensorBoard's
                   event files (events.py), curves.png (curves.py), MLflow (tracking.py)
"""
from __future__ import annotations

from .. import exports

_MODULE_OF = {
    "PAPER_RECIPE": "config",
    "RECIPES": "config",
    "TrainConfig": "config",
    "augment_samples": "stream",
    "check_initialisation": "run",
    "collate": "stream",
    "detect_images": "validation",
    "dry_run": "preflight",
    "fit": "run",
    "gather": "validation",
    "load_and_augment": "stream",
    "param_groups": "step",
    "records_of": "stream",
    "run_training": "run",
    "train_step": "step",
    "validate": "validation",
    "warm_up": "step",
}
__all__ = sorted(_MODULE_OF)
__getattr__ = exports(__name__, _MODULE_OF)
