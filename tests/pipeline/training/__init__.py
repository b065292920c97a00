from pathlib import Path

from pipeline.training import TrainConfig


def small_run(shapes: dict, storage: Path, name: str, **overrides) -> TrainConfig:
    """A run that takes seconds: detr-tiny with 10 queries on a tiny_shapes set, one epoch."""
    settings = dict(
        annotations=shapes["train_annotations"], images=shapes["train_images"], storage=str(storage), name=name,
        preset="detr-tiny", model_overrides={"num_queries": 10}, epochs=1, batch_size=4, workers=1,
        cpus_per_worker=1.0, data_cpus=0.5, augment_scale=0.15,
    )
    settings.update(overrides)
    return TrainConfig(**settings)
