"""Train DETR on a COCO-format dataset with Ray Train; ends with one JSON summary line.

    python jobs/train.py --annotations ANN --images ROOT --storage URI --name RUN [...]
    ray job submit --working-dir . -- python jobs/train.py ...

Re-running the same command (same --storage and --name) resumes from the latest checkpoint.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout or a working dir

from pipeline.cluster.token import use_token  # noqa: E402

use_token()  # the token of the user's clusters, before Ray is imported: Ray reads its mode once, at import

import ray  # noqa: E402

from pipeline.cluster.connect import RAY_HELP, use_ray  # noqa: E402
from pipeline.cluster.resources import ClusterTooSmall  # noqa: E402
from pipeline.evaluation import BACKENDS  # noqa: E402
from pipeline.progress import dry_run_headline, training_headline  # noqa: E402
from pipeline.training import PAPER_RECIPE, RECIPES, TrainConfig, dry_run, run_training  # noqa: E402


def recipe_default(name: str) -> str:
    """A recipe flag's default, said in its help."""
    presets = ", ".join(f"{preset} {recipe[name]:g}" for preset, recipe in RECIPES.items() if name in recipe)
    return f"default: the preset's recipe ({presets}) without --init, else the paper's {PAPER_RECIPE[name]:g}"


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig("", "", "", "")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--annotations", required=True, help="COCO annotation JSON of the training split (path or s3://)")
    p.add_argument("--images", required=True, help="folder (or s3:// prefix) the file_names are relative to")
    p.add_argument("--val-annotations", help="COCO JSON of a validation split: enables COCO AP reporting")
    p.add_argument("--val-images", help="image folder of the validation split")
    p.add_argument("--storage", required=True, help="where runs and checkpoints live (path or s3://)")
    p.add_argument("--name", required=True, help="run name; the same name resumes that run")
    p.add_argument("--preset", default=d.preset, help=f"model preset (default {d.preset})")
    p.add_argument("--init", help="checkpoint to fine-tune from: ours, a reference .pth, or a Hugging Face folder")
    p.add_argument("--masks", action="store_true",
                   help="train the mask head too (segmentation), from the annotations' polygons or RLE")
    p.add_argument("--freeze-detr", action="store_true",
                   help="with --masks and a box model as --init: train the mask head alone (the paper's recipe)")
    p.add_argument("--backbone-weights", metavar="FILE",
                   help="a torchvision ResNet state_dict (ImageNet), path or s3://, loaded before training")
    p.add_argument("--from-scratch", action="store_true",
                   help="train a paper preset from random weights (otherwise refused without --backbone-weights "
                        "or --init)")
    p.add_argument("--backbone-norm", choices=("frozen_bn", "batch_norm", "group_norm"),
                   help="override the preset's backbone normalisation")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"total epochs (default {d.epochs})")
    p.add_argument("--batch-size", type=int,
                   help=f"images per worker per step ({recipe_default('batch_size')})")
    p.add_argument("--workers", type=int, default=d.workers, help="Ray Train workers (data parallel)")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker, bf16 autocast")
    p.add_argument("--cpus-per-worker", type=float, default=d.cpus_per_worker, help="logical CPUs per worker")
    p.add_argument("--placement", default=d.placement, choices=("PACK", "SPREAD", "STRICT_SPREAD"),
                   help="workers over nodes: PACK fills nodes, STRICT_SPREAD puts each on its own node")
    p.add_argument("--data-cpus", type=float, default=d.data_cpus, help="logical CPUs per decode/augment task")
    p.add_argument("--lr", type=float,
                   help=f"learning rate of the transformer and heads ({recipe_default('lr')})")
    p.add_argument("--lr-backbone", type=float,
                   help=f"learning rate of the backbone ({recipe_default('lr_backbone')})")
    p.add_argument("--warmup-steps", type=int,
                   help=f"optimizer steps of linear learning-rate warm-up ({recipe_default('warmup_steps')})")
    p.add_argument("--encoder-matches", type=int,
                   help=f"two-stage presets: encoder proposals matched to each object "
                        f"({recipe_default('encoder_matches')})")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--clip-max-norm", type=float, default=d.clip_max_norm, help="gradient clipping (0: off)")
    p.add_argument("--lr-drop", type=int, default=d.lr_drop, help="epochs between learning-rate drops (x0.1)")
    p.add_argument("--augment-scale", type=float, default=d.augment_scale,
                   help="multiplies the paper's sizes (shorter side 480-800, max 1333); e.g. 0.25 for ~200 px images")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="epochs between validation passes")
    p.add_argument("--eval-backend", choices=BACKENDS, default=d.eval_backend,
                   help=f"COCO scorer of the validation passes (default {d.eval_backend}; the same numbers)")
    p.add_argument("--max-failures", type=int, default=d.max_failures, help="worker-group restarts allowed")
    p.add_argument("--log-every", type=int, default=d.log_every,
                   help="steps between progress lines (there is one at least every minute)")
    p.add_argument("--resource-wait", type=float, default=None, metavar="SECONDS",
                   help="wait this long for an autoscaler to add what the run needs (default 600 with --gpu, else 0)")
    p.add_argument("--keep", type=int, default=d.num_to_keep,
                   help=f"the last checkpoints to keep (default {d.num_to_keep}; 0: all); the best by validation AP "
                        "is kept besides, in RUN/best/")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--mlflow", metavar="URI",
                   help="also log to MLflow: a tracking server's URI or a local folder (needs the mlflow extra); "
                        "TensorBoard's files and curves.png are written under the run folder either way")
    p.add_argument("--dry-run", action="store_true",
                   help="check the annotations, a sample of the image files, the model, storage and resources; "
                        "print a JSON summary and exit (0 when the run could start) without training")
    p.add_argument("--check-all-files", action="store_true", help="with --dry-run: check every image file")
    p.add_argument("--ray", metavar="local|head|HOST:PORT", help=RAY_HELP)
    return p


def config_from(a: argparse.Namespace) -> TrainConfig:
    """The flags as a TrainConfig; the recipe flags not given stay None, so TrainConfig fills
    them from the preset's recipe as it does for a library call."""
    return TrainConfig(
        annotations=a.annotations, images=a.images, val_annotations=a.val_annotations, val_images=a.val_images,
        storage=a.storage, name=a.name, preset=a.preset, init=a.init, backbone_weights=a.backbone_weights,
        masks=a.masks, freeze_detr=a.freeze_detr,
        from_scratch=a.from_scratch,
        model_overrides={"backbone_norm": a.backbone_norm} if a.backbone_norm else {},
        epochs=a.epochs, workers=a.workers, use_gpu=a.gpu,
        cpus_per_worker=a.cpus_per_worker, placement=a.placement, data_cpus=a.data_cpus,
        weight_decay=a.weight_decay, clip_max_norm=a.clip_max_norm, lr_drop=a.lr_drop,
        augment_scale=a.augment_scale, eval_every=a.eval_every, eval_backend=a.eval_backend,
        log_every=a.log_every, max_failures=a.max_failures,
        num_to_keep=a.keep or None, seed=a.seed, resource_wait_s=a.resource_wait, lr=a.lr, lr_backbone=a.lr_backbone,
        warmup_steps=a.warmup_steps, encoder_matches=a.encoder_matches, batch_size=a.batch_size, mlflow=a.mlflow,
    )


def main() -> None:
    args = build_parser().parse_args()
    use_ray(args.ray)
    try:
        config = config_from(args).resolved()  # relative paths: against the folder the job started from
    except ValueError as e:
        sys.exit(f"train: {e}")
    if args.dry_run:
        summary = dry_run(config, check_all_files=args.check_all_files)
        print(dry_run_headline(summary))
        print(json.dumps(summary))
        sys.exit(0 if summary["ok"] else 1)
    try:
        summary = run_training(config)  # checks the run and its data, then starts (or joins) Ray
    except (ValueError, OSError, ClusterTooSmall) as e:  # bad input or a cluster too small: one line
        ray.shutdown()
        sys.exit(f"train: {e}")
    ray.shutdown()  # flush the workers' log lines before the summary
    print(training_headline(summary))
    print(json.dumps(summary, default=str))


if __name__ == "__main__":
    main()
