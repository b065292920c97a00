"""Bulk detection: images (local or s3://) -> Ray Data -> model actors -> Parquet, each image once.

The chain reads as Ray's examples do:

    from_arrow(paths) -> map_batches(load_images)   CPU tasks: read, decode, EXIF, resize
                      -> map_batches(Detector)      actor pool: normalise, model, boxes
                      -> write_datasink(PartSink)   whole part files, named by their paths

Every input ends as exactly one row: detections, or an `error` saying why not. A re-run
over the same output skips the paths its part files already hold, so a killed run
resumes without duplicates or gaps.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
import torch
import torchvision.transforms.v2.functional as TF
from ray.data import ActorPoolStrategy
from ray.data.block import BlockAccessor
from ray.data.datasource import Datasink

from model import DETR, PRESETS, DetrConfig, PostProcess, optimize_for_inference, read_checkpoint, weights_id
from model import uri as uris

from . import predictions
from .coco import load_coco
from .images import IMAGE_EXTENSIONS, MAX_PIXELS, ImageError, decode_rgb


@dataclass(frozen=True)
class DetectConfig:
    images: str  # folder / s3:// prefix, COCO annotation .json, or manifest (.txt / .parquet)
    output: str  # folder (local or s3://) that receives the part files
    checkpoint: str
    image_root: str | None = None  # for a COCO file: where its file_names live (default: its folder)
    score_threshold: float = 0.5
    batch_size: int = 8
    min_size: int = 800  # shorter side after resizing
    max_size: int = 1333  # longer side cap
    max_pixels: int = MAX_PIXELS  # larger images get an error row (decompression bombs)
    actors: tuple[int, int] | None = None  # (min, max) pool size; default from the cluster
    gpus_per_actor: float | None = None  # default: 1 when the cluster has GPUs, else 0
    cpus_per_actor: float = 1.0  # also the actor's torch threads on CPU
    images_per_read_task: int = 16
    rows_per_file: int = 1000
    overwrite: bool = False


# ---------------------------------------------------------------- inputs

def list_inputs(images: str, image_root: str | None = None) -> pa.Table:
    """path + image_id of every input, deduplicated, in listing order."""
    if images.endswith(".json"):
        root = image_root or (images.rsplit("/", 1)[0] if "/" in images else ".")
        dataset = load_coco(images, root, check_files=False)  # a missing file becomes an error row
        table = pa.table({"path": [dataset.image_uri(i) for i in dataset.images],
                          "image_id": pa.array([i["id"] for i in dataset.images], pa.int64())})
    elif images.endswith(".parquet"):
        fs, path = uris.resolve(images)
        table = pq.read_table(path, filesystem=fs)
        if "path" not in table.column_names:
            raise ValueError(f"manifest {images} has no 'path' column (columns: {table.column_names})")
        ids = table["image_id"].cast(pa.int64()) if "image_id" in table.column_names else pa.nulls(len(table), pa.int64())
        table = pa.table({"path": table["path"].cast(pa.string()), "image_id": ids})
    elif images.endswith(".txt"):
        lines = [ln.strip() for ln in uris.read_bytes(images).decode().splitlines()]
        paths = [ln for ln in lines if ln and not ln.startswith("#")]
        table = pa.table({"path": pa.array(paths, pa.string()), "image_id": pa.nulls(len(paths), pa.int64())})
    else:
        paths = list_image_files(images)
        table = pa.table({"path": pa.array(paths, pa.string()), "image_id": pa.nulls(len(paths), pa.int64())})
    first = pc.equal(pc.index_in(table["path"], table["path"]), pa.array(np.arange(len(table)), pa.int32()))
    return table.filter(first)


def list_image_files(folder: str) -> list[str]:
    """Every file under folder (recursive) with an image extension, as URIs, sorted."""
    fs, root = uris.resolve(folder)
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        raise FileNotFoundError(f"no folder at {folder}")
    scheme = folder.split("://", 1)[0] + "://" if "://" in folder and not folder.startswith("file://") else ""
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    return sorted(scheme + i.path for i in infos if i.is_file and i.base_name.lower().endswith(IMAGE_EXTENSIONS))


# ---------------------------------------------------------------- CPU stage

def load_images(batch: dict[str, np.ndarray], min_size: int, max_size: int, max_pixels: int) -> dict[str, Any]:
    """Read + decode + resize each image of a block; a failure becomes that row's error."""
    n = len(batch["path"])
    out: dict[str, list] = {"width": [], "height": [], "image": [], "error": []}
    for path in batch["path"]:
        width = height = None
        try:
            data = read_image_bytes(str(path))
            rgb = decode_rgb(data, max_pixels)
            height, width = rgb.shape[:2]
            image = resize(torch.from_numpy(rgb).permute(2, 0, 1), min_size, max_size).numpy()
            error = None
        except ImageError as e:
            image, error = np.zeros((3, 0, 0), np.uint8), str(e)
        except Exception as e:  # anything else still gets its row, never stops the block
            image, error = np.zeros((3, 0, 0), np.uint8), f"preprocess: {type(e).__name__}: {e}"
        out["width"].append(width)
        out["height"].append(height)
        out["image"].append(image)
        out["error"].append(error)
    result = {"path": batch["path"], "image_id": batch["image_id"], **{k: _objects(v) for k, v in out.items()}}
    assert all(len(v) == n for v in result.values())
    return result


def read_image_bytes(path: str) -> bytes:
    try:
        return uris.read_bytes(path)
    except FileNotFoundError as e:
        raise ImageError("missing", f"no such file {path}") from e
    except OSError as e:
        raise ImageError("unreadable", f"{type(e).__name__}: {e}") from e


def resize(image: torch.Tensor, min_size: int, max_size: int) -> torch.Tensor:
    """Shorter side to min_size unless the longer side would pass max_size (torchvision's
    rounding), never below 1 px, so extreme aspect ratios still get detections."""
    height, width = image.shape[-2:]
    short, long = sorted((height, width))
    new_short, new_long = min_size, int(min_size * long / short)
    if new_long > max_size:
        new_short, new_long = max(1, int(max_size * new_short / new_long)), max_size
    size = [new_short, new_long] if height <= width else [new_long, new_short]
    return TF.resize(image, size, antialias=True)


def _objects(values: list) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


# ---------------------------------------------------------------- model actors

class Detector:
    """One model replica (an actor): a GPU where Ray gave it one, else CPU threads."""

    def __init__(self, weights: Any, model_id: str, score_threshold: float, cpus: float):
        """weights: (config dict, state_dict), or an object ref of it (shared by all actors)."""
        config_dict, state_dict = ray.get(weights) if isinstance(weights, ray.ObjectRef) else weights
        config = DetrConfig.from_dict(config_dict)
        on_gpu = torch.cuda.is_available() and ray.is_initialized() and bool(ray.get_gpu_ids())
        self.device = torch.device("cuda" if on_gpu else "cpu")
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, int(cpus)))
        model = DETR(config)
        model.load_state_dict(state_dict)
        self.model = optimize_for_inference(model.eval()).to(self.device)
        self.mean = torch.tensor(config.image_mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(config.image_std, device=self.device).view(1, 3, 1, 1)
        self.postprocess = PostProcess(score_threshold, top_k=config.num_queries)
        self.model_id = model_id

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        n = len(batch["path"])
        detections: list[dict | None] = [None] * n
        errors = [e if isinstance(e, str) else None for e in batch["error"]]  # all-null columns arrive as NaN
        for rows in same_shape_groups(batch["image"], errors):
            try:
                found = self.detect(batch["image"], batch["width"], batch["height"], rows)
            except Exception as e:  # one bad group must not lose the others' rows
                for i in rows:
                    errors[i] = f"inference: {type(e).__name__}: {e}"
                continue
            for i, d in zip(rows, found):
                detections[i] = d
        return predictions.detections_table(
            batch["path"].tolist(), _optional(batch["image_id"]), _optional(batch["width"]),
            _optional(batch["height"]), detections, errors, self.model_id,
        )

    @torch.inference_mode()
    def detect(self, images, widths, heights, rows: list[int]) -> list[dict[str, np.ndarray]]:
        pixels = torch.from_numpy(np.stack([images[i] for i in rows])).to(self.device, non_blocking=True)
        pixels = (pixels.float() / 255 - self.mean) / self.std
        pixels = pixels.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            outputs = self.model(pixels)
        sizes = torch.tensor([[int(heights[i]), int(widths[i])] for i in rows])
        return [{k: v.cpu().numpy() for k, v in d.items()} for d in self.postprocess(outputs, sizes)]


def same_shape_groups(images: Iterable[np.ndarray], errors: list[str | None]) -> list[list[int]]:
    """Row indices grouped by image shape: a batch is never padded, so an image's result
    does not depend on what it was batched with."""
    groups: dict[tuple, list[int]] = {}
    for i, (image, error) in enumerate(zip(images, errors)):
        if error is None:
            groups.setdefault(tuple(image.shape), []).append(i)
    return list(groups.values())


def _optional(values: np.ndarray) -> list:
    return [None if v is None or (isinstance(v, float) and np.isnan(v)) else int(v) for v in values]


# ---------------------------------------------------------------- output

class PartSink(Datasink):
    """Writes each write task's rows as one whole part file (see predictions.py)."""

    def __init__(self, output: str, run: dict[str, Any], rows_per_file: int):
        self.output, self.run, self.rows_per_file = output, run, rows_per_file

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_file

    def write(self, blocks: Iterable, ctx) -> dict[str, Any]:
        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return {"files": [], "rows": 0}
        table = pa.concat_tables([t.cast(predictions.SCHEMA) for t in tables])
        return {"files": [predictions.write_part(self.output, table, self.run)], "rows": table.num_rows}


# ---------------------------------------------------------------- the job

def run_detection(config: DetectConfig) -> dict[str, Any]:
    """Detect every input not yet in config.output; returns the summary the job prints."""
    started = time.time()
    model_config, state_dict = read_checkpoint(config.checkpoint)
    run = run_parameters(config, model_config, weights_id(state_dict))
    if config.overwrite:
        predictions.remove_parts(config.output)
    else:
        check_same_run(config.output, run)

    inputs = list_inputs(config.images, config.image_root)
    done = predictions.read_predictions(config.output, ["path"])["path"]
    todo = inputs.filter(pc.invert(pc.is_in(inputs["path"], value_set=done.combine_chunks())))
    if todo.num_rows:
        weights = ray.put((model_config.to_dict(), state_dict))
        del state_dict
        build_dataset(todo, config, run, weights).write_datasink(
            PartSink(config.output, run, config.rows_per_file),
            ray_remote_args={"num_cpus": 0.25})  # light work: never starved by actors holding whole CPUs
    seconds = time.time() - started
    return summarize(config.output, inputs, todo.num_rows, seconds, run)


def run_parameters(config: DetectConfig, model_config: DetrConfig, model_id: str) -> dict[str, Any]:
    """What the files' metadata records: enough to reproduce the rows, no credentials."""
    return {
        "model": model_id,
        "checkpoint": uris.strip_credentials(config.checkpoint),
        "preset": preset_name(model_config),
        "config": model_config.to_dict(),
        "score_threshold": config.score_threshold,
        "min_size": config.min_size,
        "max_size": config.max_size,
        "max_pixels": config.max_pixels,
    }


def preset_name(model_config: DetrConfig) -> str:
    """The preset this architecture is (whatever its number of classes), or "custom"."""
    for name, preset in PRESETS.items():
        if preset.replace(num_classes=model_config.num_classes, aux_loss=model_config.aux_loss) == model_config:
            return name
    return "custom"


def check_same_run(output: str, run: dict[str, Any]) -> None:
    previous = predictions.run_metadata(output)
    if previous is None:
        return
    keys = ("model", "score_threshold", "min_size", "max_size", "max_pixels")
    changed = {k: (previous.get(k), run[k]) for k in keys if previous.get(k) != run[k]}
    if changed:
        raise ValueError(
            f"{output} holds predictions of another run ({', '.join(f'{k}: {a} -> {b}' for k, (a, b) in changed.items())}); "
            "resume with the same parameters, or pass --overwrite / another output"
        )


def build_dataset(todo: pa.Table, config: DetectConfig, run: dict[str, Any], weights) -> ray.data.Dataset:
    step = config.images_per_read_task
    blocks = [todo.slice(i, step) for i in range(0, todo.num_rows, step)]
    gpus = default_gpus(config.gpus_per_actor)
    low, high = config.actors or default_actors(config.cpus_per_actor, gpus)
    return (
        ray.data.from_arrow(blocks)
        .map_batches(load_images, batch_size=None, batch_format="numpy", num_cpus=0.5,
                     fn_kwargs={"min_size": config.min_size, "max_size": config.max_size,
                                "max_pixels": config.max_pixels})
        .map_batches(Detector, batch_size=config.batch_size, batch_format="numpy",
                     compute=ActorPoolStrategy(min_size=low, max_size=high),
                     num_cpus=config.cpus_per_actor, num_gpus=gpus,
                     fn_constructor_kwargs={"weights": weights, "model_id": run["model"],
                                            "score_threshold": config.score_threshold,
                                            "cpus": config.cpus_per_actor})
    )


def default_gpus(gpus_per_actor: float | None) -> float:
    if gpus_per_actor is not None:
        return gpus_per_actor
    return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


def default_actors(cpus_per_actor: float, gpus_per_actor: float) -> tuple[int, int]:
    """GPU: one actor per GPU. CPU: actors on half the CPUs; the rest decode images."""
    resources = ray.cluster_resources()
    if gpus_per_actor:
        return 1, max(1, int(resources.get("GPU", 0) / gpus_per_actor))
    return 1, max(1, int(resources.get("CPU", 1) / 2 / cpus_per_actor))


def summarize(output: str, inputs: pa.Table, processed: int, seconds: float, run: dict[str, Any]) -> dict[str, Any]:
    table = predictions.read_predictions(output, ["path", "error"])
    rows = table.num_rows
    return {
        "inputs": inputs.num_rows,
        "processed": processed,
        "skipped": inputs.num_rows - processed,
        "rows": rows,
        "duplicates": rows - len(pc.unique(table["path"])),
        "missing": int(pc.sum(pc.invert(pc.is_in(inputs["path"], value_set=table["path"].combine_chunks()))).as_py() or 0),
        "errors": predictions.error_kinds(table["error"]),
        "images_per_second": round(processed / seconds, 2) if seconds > 0 else None,
        "seconds": round(seconds, 1),
        "output": output,
        "model": run["model"],
    }
