"""A training run on the current Ray cluster: checks, TorchTrainer, and the run's summary.

Re-running with the same storage and name resumes from the latest checkpoint; after a worker
failure Ray restarts the group (FailureConfig) and training continues from that checkpoint.
"""
from __future__ import annotations

from typing import Any

import pyarrow.fs as pafs
import ray
import ray.train
import ray.train.torch

import storage as uris
from model.checkpoint import CHECKPOINT_FILE, check_source
from model.config import DetrConfig
from model.families import FamilyConfig
from model.interface import preset_config

from .. import options
from ..cluster.connect import init_ray
from ..cluster.resources import wait_for
from ..coco import CocoDataset, load_coco
from . import tracking
from .config import LoopInputs, TrainConfig
from .entry import train_loop
from .events import FOLDER
from .stream import records_of

CONFIG_FILE = "config.yaml"  # in the run folder: the options it last ran with (jobs/train.py --config)

# Ray starts workers at niceness 15, below its own daemons (raylet, GCS, agents), whose
# frequent short wake-ups then preempt the training step. At 0, as a driver runs, the
# training workers keep their cores; Ray Data's decode/augment tasks stay at 15 and so
# take what the step leaves. On a 2-core VM the gain in bench/train_overhead.py was
# within its noise (bench/README.md). Ray Train's print patch sends each printed line to the
# console twice (a tee to the worker's redirected stdout, and its logger): plain print instead.
WORKER_RUNTIME_ENV = {"env_vars": {"RAY_worker_niceness": "0", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}}


def run_folder(cfg: TrainConfig) -> str:
    """RUN: where the run lives (Ray's checkpoints, best/, progress/, tensorboard/, curves.png)."""
    return uris.join(cfg.storage, cfg.name)


def best_uri(cfg: TrainConfig) -> str:
    """Where the checkpoint with the best validation AP so far is kept, beside Ray's."""
    return uris.join(run_folder(cfg), "best", CHECKPOINT_FILE)


def checkpoint_uri(checkpoint: ray.train.Checkpoint) -> str:
    """The checkpoint file as a URI that load_checkpoint accepts."""
    path = f"{checkpoint.path.rstrip('/')}/{CHECKPOINT_FILE}"
    return f"s3://{path}" if isinstance(checkpoint.filesystem, pafs.S3FileSystem) else path


def run_config(cfg: TrainConfig) -> ray.train.RunConfig:
    """Where the run lives, how often it may restart, which checkpoints it keeps: the last
    `keep` (ranked by epoch; Ray also never deletes the latest), all when None."""
    return ray.train.RunConfig(
        name=cfg.name,
        storage_path=cfg.storage,
        worker_runtime_env=WORKER_RUNTIME_ENV,  # type: ignore[call-arg]  # Ray Train v2's (the static type is v1's)
        failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(
            num_to_keep=cfg.keep, checkpoint_score_attribute="epoch", checkpoint_score_order="max"
        ),
    )


def loop_inputs(cfg: TrainConfig, train_set: CocoDataset, mlflow: tracking.MlflowLog | None) -> LoopInputs:
    """What every worker gets: the config, and the annotation records in the object store (the
    training ones and the validation ones)."""
    val_records = (ray.put(records_of(load_coco(cfg.val_annotations, cfg.val_images)))
                   if cfg.val_annotations and cfg.val_images else None)  # (one without the other: refused)
    return LoopInputs(cfg, train_set.num_classes, len(train_set.images),
                      ray.put(records_of(train_set, cfg.masks)), val_records,
                      run_folder(cfg), best_uri(cfg), mlflow, train_set.stuff_classes)


def check_initialisation(cfg: TrainConfig) -> None:
    """The network the run would build is a valid one (checked here, not in the workers), and a
    paper preset learns from a pretrained backbone (its frozen BatchNorm keeps ImageNet's
    statistics): refuse to start one from random weights unless asked to. With --mlflow, MLflow's
    client is installed."""
    if cfg.init:
        check_source(cfg.init, cfg.masks)  # there, of a supported model type, asking to run no code
    preset = preset_config(cfg.preset, **cfg.model_overrides)  # a ValueError naming what does not fit
    if cfg.masks and not cfg.init and isinstance(preset, FamilyConfig):
        raise ValueError(f"--masks: {cfg.preset} has no mask head (train a detr-* preset, or an rf_detr folder "
                         "given with --init, with --masks)")
    if cfg.mlflow:
        tracking.client(cfg.mlflow)  # installed, or a line that says how to install it
    if cfg.freeze_detr and not (cfg.masks and cfg.init):
        raise ValueError("--freeze-detr trains the mask head alone: give --masks and a box model with --init")
    if cfg.init and cfg.backbone_weights:
        raise ValueError("--init and --backbone-weights both set the backbone's weights: give one")
    if cfg.backbone_weights:
        if not isinstance(preset, DetrConfig) or preset.backbone == "small_cnn":
            raise ValueError(f"--backbone-weights: {cfg.preset}'s small_cnn backbone has no pretrained weights")
        if uris.file_type(cfg.backbone_weights) != pafs.FileType.File:
            raise ValueError(f"--backbone-weights {cfg.backbone_weights}: no such file")
    paper = isinstance(preset, DetrConfig) and preset.backbone_norm == "frozen_bn"
    if paper and not (cfg.init or cfg.backbone_weights or cfg.from_scratch):
        raise ValueError(f"{cfg.preset} starts from an ImageNet backbone: give --backbone-weights FILE (a "
                         "torchvision ResNet state_dict, see docs/training.md) or --init CHECKPOINT, or "
                         "--from-scratch to train it from random weights deliberately")


def check_masks(train_set: CocoDataset) -> None:
    """Mask training needs segmentations: say what the annotations lack, and name the unusable ones."""
    usable = train_set.usable_masks
    objects = sum(len(boxes) for boxes in train_set.boxes.values())
    problems = dict(train_set.mask_problems)
    if usable == 0:
        raise ValueError(f"--masks: none of the {objects} objects of {train_set.annotation_uri} has a usable "
                         f"segmentation ({train_set.unsegmented} without one, unusable: {problems or 'none'}"
                         + (f", e.g. {train_set.mask_problem_records[0]}" if train_set.mask_problem_records else "")
                         + ")")
    if usable < objects:
        print(f"--masks: {objects - usable} of {objects} objects have no usable segmentation and are left out of "
              f"training ({train_set.unsegmented} without one, unusable: {problems or 'none'}; e.g. "
              f"{'; '.join(train_set.mask_problem_records[:3]) or 'none'})", flush=True)


def check_fit(cfg: TrainConfig) -> None:
    """Stop at once, saying what is short, when the workers plus one decode/augment task cannot
    all run on the cluster: Ray would start the workers and wait for the data tasks forever."""
    need = {"CPU": cfg.workers * cfg.cpus_per_worker + cfg.data_cpus}
    if cfg.gpu:
        need["GPU"] = float(cfg.workers)
    wait_s = cfg.resource_wait if cfg.resource_wait is not None else (600.0 if cfg.gpu else 0.0)
    wait_for(need, wait_s, f"{cfg.workers} training workers of {cfg.cpus_per_worker:g} CPU"
             + (" and 1 GPU" if cfg.gpu else "") + f" plus one decode/augment task of {cfg.data_cpus:g} CPU",
             "Use fewer --workers, a smaller --cpus-per-worker or --data-cpus, a larger cluster, or "
             "--resource-wait SECONDS for an autoscaler to add nodes")


def fit(cfg: TrainConfig) -> tuple[ray.train.Result, CocoDataset]:
    """Check the run and its data, then train on the Ray cluster (joined, or started here once
    the inputs are known to be good). Returns Ray's Result (its metrics_dataframe: one row per
    kept checkpoint, i.e. per epoch) and the training set. Relative paths are the caller's
    (resolved())."""
    cfg = cfg.resolved()
    if cfg.val_annotations and not cfg.val_images:
        raise ValueError("--val-annotations needs --val-images")
    check_initialisation(cfg)
    train_set = load_coco(cfg.annotations, cfg.images)
    print(learning_rate_line(cfg), flush=True)  # once the inputs are known to be there
    if train_set.dropped_boxes:  # said here as --dry-run says it, not only counted in the summary
        print(f"{train_set.dropped_boxes} box(es) of {cfg.annotations} have no area inside their image and are left "
              "out of training (as the reference does)", flush=True)
    if cfg.masks:
        check_masks(train_set)
    init_ray()
    ray.data.DataContext.get_current().enable_progress_bars = False  # one line per epoch instead
    check_fit(cfg)
    uris.write_bytes(uris.join(run_folder(cfg), CONFIG_FILE), options.to_yaml(cfg).encode())  # replays the run
    mlflow = (tracking.MlflowLog(cfg.mlflow, tracking.open_run(cfg.mlflow, run_folder(cfg), tracking.run_params(cfg)))
              if cfg.mlflow else None)
    trainer = ray.train.torch.TorchTrainer(
        train_loop,
        train_loop_config={"inputs": loop_inputs(cfg, train_set, mlflow)},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.workers, use_gpu=cfg.gpu, resources_per_worker={"CPU": cfg.cpus_per_worker},
            placement_strategy=cfg.placement,
        ),
        run_config=run_config(cfg),
    )
    try:
        result = trainer.fit()
    except BaseException:
        if mlflow:
            tracking.close_run(mlflow.uri, mlflow.run_id, failed=True)
        raise
    if mlflow:
        tracking.close_run(mlflow.uri, mlflow.run_id, failed=result.error is not None)
    return result, train_set


def learning_rate_line(cfg: TrainConfig) -> str:
    """The learning rates used and the rule behind them: as given, whatever the total batch
    (the paper's recipe is lr 1e-4 at a total batch of 64; the job does not rescale it)."""
    total = cfg.workers * cfg.batch_size
    return (f"training {cfg.init or cfg.preset}: {cfg.workers} worker(s) x batch {cfg.batch_size} = total batch "
            f"{total}; lr {cfg.lr:g}, backbone lr {cfg.lr_backbone:g}, as given (not scaled with the total batch; "
            "the paper's recipe: 1e-4 / 1e-5 at total batch 64)")


def run_training(cfg: TrainConfig) -> dict[str, Any]:
    """Train (see fit) and summarise the run: path, last and best checkpoint, final metrics."""
    cfg = cfg.resolved()
    result, train_set = fit(cfg)
    summary: dict[str, Any] = {
        "run": result.path,
        "checkpoint": checkpoint_uri(result.checkpoint) if result.checkpoint else None,
        "best_checkpoint": None,
        "metrics": result.metrics,
        "num_classes": train_set.num_classes,
        "dropped_boxes": train_set.dropped_boxes,
        "curves": uris.join(run_folder(cfg), "curves.png"),  # and TensorBoard's files (watch.py)
        "tensorboard": uris.join(run_folder(cfg), FOLDER),
        "mlflow": cfg.mlflow,
    }
    if cfg.val_annotations and uris.file_type(best_uri(cfg)) == pafs.FileType.File:
        summary["best_checkpoint"] = best_uri(cfg)
    return summary
