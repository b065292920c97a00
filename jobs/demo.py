"""End-to-end demo on embedded defaults (no downloads): data -> training -> detection -> scores.

Writes a small synthetic shapes dataset and trains detr-tiny on it for a few epochs with Ray
Train (a local Ray is started): that shows the training path, but a few CPU minutes do not
make a good detector. The validation images are then bulk-detected through Ray Data into
Parquet with a detr-tiny that this project's training job trained for longer on the same
kind of data, with the paper's mask head trained on it after (checkpoints/detr-tiny-shapes-masks.pt;
checkpoints/README.md has the commands and its weights id), scored with COCO metrics (boxes and
masks) and drawn with its masks. `--detect-with trained` detects with the checkpoint the demo
just trained instead.

    python jobs/demo.py --out demo-output
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.cluster.token import use_token  # noqa: E402

use_token()  # the token of the user's clusters, before Ray is imported: Ray reads its mode once, at import

import ray  # noqa: E402

from pipeline import options  # noqa: E402
from pipeline.cluster.connect import RAY_HELP, init_ray, use_ray  # noqa: E402
from pipeline.detection.config import DetectConfig  # noqa: E402
from pipeline.detection.render import render_predictions  # noqa: E402
from pipeline.detection.run import run_detection  # noqa: E402
from pipeline.evaluation.metrics import score_files  # noqa: E402
from pipeline.options import at_least, between, option  # noqa: E402
from pipeline.progress import duration  # noqa: E402
from pipeline.synthetic import CATEGORIES, SyntheticConfig, make_synthetic  # noqa: E402
from pipeline.training.config import TrainConfig  # noqa: E402
from pipeline.training.run import run_training  # noqa: E402

SHIPPED = str(Path(__file__).resolve().parents[1] / "checkpoints" / "detr-tiny-shapes-masks.pt")


@dataclass(frozen=True)
class DemoConfig:
    """The demo's options (pipeline/options.py)."""
    out: str = option("demo-output", path=True, help="folder for data, runs and pictures")
    train: int = option(64, check=at_least(1), help="synthetic training images")
    val: int = option(50, check=at_least(1), help="synthetic validation images")
    epochs: int = option(3, check=at_least(1), help="training epochs")
    detect_with: str = option("shipped", choices=("shipped", "trained"),
                              help="the checkpoint that detects: the shipped detr-tiny, or the one trained here")
    pictures: int = option(4, check=at_least(0), help="validation images drawn with detections")
    picture_score: float = option(0.5, check=between(0, 1), help="boxes drawn score at least this")

    def __post_init__(self) -> None:
        options.check(self)


def main(argv: list[str] | None = None) -> None:
    parser = options.parser(DemoConfig, __doc__)
    parser.add_argument("--ray", metavar="local|head|HOST:PORT", help=RAY_HELP)
    config, ray_flag = options.parse(parser, DemoConfig, argv)
    try:
        config = options.with_absolute_paths(config)
    except options.PathError as e:
        sys.exit(f"demo: {e}")
    started = time.time()
    out = config.out  # absolute (with_absolute_paths)
    os.makedirs(out, exist_ok=True)
    shutil.rmtree(os.path.join(out, "runs"), ignore_errors=True)  # a fresh run each time, not a resume

    data = make_synthetic(os.path.join(out, "data"), config.train, config.val, seed=0,
                          config=SyntheticConfig(min_side=96, max_side=192, max_objects=4))
    print(f"synthetic data: {config.train} train / {config.val} val images under {data['out']}", flush=True)

    use_ray(ray_flag.ray)
    init_ray()
    training = run_training(TrainConfig(
        annotations=data["train_annotations"], images=data["train_images"],
        val_annotations=data["val_annotations"], val_images=data["val_images"],
        storage=os.path.join(out, "runs"), name="demo", preset="detr-tiny", epochs=config.epochs,
        cpus_per_worker=1.0, augment_scale=0.2,  # and detr-tiny's recipe, as jobs/train.py gives it
    ))
    print(f"trained {training['metrics']['epoch']} epochs; last checkpoint {training['checkpoint']}; curves in "
          f"{training['curves']} (or: tensorboard --logdir {training['tensorboard']})", flush=True)

    checkpoint = SHIPPED if config.detect_with == "shipped" else training["checkpoint"]
    predictions = os.path.join(out, "predictions")
    detection = run_detection(DetectConfig(
        images=data["val_annotations"], image_root=data["val_images"], output=predictions,
        checkpoint=checkpoint, overwrite=True,  # the detection defaults: sizes from the checkpoint, threshold 0.05
    ))
    ray.shutdown()
    scores = score_files(predictions, data["val_annotations"])
    print(f"detected {detection['rows']} images with {checkpoint} into {predictions}", flush=True)
    names = {category_id: name for name, category_id in CATEGORIES.items()}
    pictures = render_predictions(predictions, config.pictures, os.path.join(out, "pictures"), names,
                                  max_boxes=10, min_score=config.picture_score, grid=os.path.join(out, "pictures.png"))
    seconds = time.time() - started
    masks = scores.get("segm", {}).get("metrics")
    print(f"demo done in {duration(seconds)}: the {config.detect_with} detr-tiny scores AP50 "
          f"{scores['metrics']['AP50']:.3f} (AP {scores['metrics']['AP']:.3f})"
          + (f", mask AP50 {masks['AP50']:.3f} (mask AP {masks['AP']:.3f})" if masks else "")
          + f" on {config.val} validation images; pictures in {out}/pictures.png", flush=True)
    print(json.dumps({
        "data": data["out"],
        "run": training["run"],
        "checkpoint": training["checkpoint"],
        "curves": training["curves"],
        "metrics": {k: training["metrics"].get(k) for k in ("epoch", "loss", "AP", "AP50")},
        "detected_with": checkpoint,
        "predictions": predictions,
        "detection": {k: detection[k] for k in ("rows", "errors", "images_per_second")},
        "evaluation": scores["metrics"],
        "mask_evaluation": masks,
        "pictures": pictures,
        "seconds": round(seconds, 1),
    }, default=str))


if __name__ == "__main__":
    main()
