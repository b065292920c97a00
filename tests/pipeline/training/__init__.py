from pathlib import Path

from pipeline.training.config import TrainConfig


def small_run(shapes: dict, storage: Path, name: str, **overrides) -> TrainConfig:
    """A run that takes seconds: detr-tiny with 10 queries on a tiny_shapes set, one epoch."""
    settings = dict(
        annotations=shapes["train_annotations"], images=shapes["train_images"], storage=str(storage), name=name,
        preset="detr-tiny", model_overrides={"num_queries": 10}, epochs=1, batch_size=4, workers=1,
        cpus_per_worker=1.0, data_cpus=0.5, augment_scale=0.15,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def tensorboard_scalars(run_folder: str) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a run's RUN/tensorboard as TensorBoard reads it: tag -> [(step, value)]
    (the folder copied here first when it is on S3, which TensorBoard reads only through boto)."""
    import tempfile

    import pyarrow.fs as pafs
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import storage as uris

    fs, path = uris.resolve(uris.join(run_folder, "tensorboard"))
    with tempfile.TemporaryDirectory() as local:
        for info in fs.get_file_info(pafs.FileSelector(path)):
            with fs.open_input_file(info.path) as f:
                Path(local, info.base_name).write_bytes(f.read())
        events = EventAccumulator(local, size_guidance={"scalars": 0})  # 0: keep every point
        events.Reload()
        return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
