"""Bulk detection: images (local or s3://) -> Ray Data -> model actors -> Parquet, each image once.

The chain reads as Ray's examples do:

    read_shards(the plan's shard files)            a read task per file (plan.py)
      -> map_batches(fetch)         CPU tasks: encoded bytes + header + canvas (read.py)
      -> map_batches(DetectorActor) actor pool: decode, canvas batches, DETR (actor.py)
      -> write_datasink(PartSink)   whole part files per shard (sink.py)

Every input ends as exactly one row: detections, or an `error` saying why not. The driver
holds one entry per shard, never one per input; a re-run over the same output skips the
shards already complete and runs the others again.
"""
from __future__ import annotations

import sys
import time
import warnings
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow.fs as pafs
import ray
from ray.data import ActorPoolStrategy
from ray.util.annotations import RayDeprecationWarning

import storage as uris
from model.checkpoint import read_checkpoint, weights_id
from model.config import PRESETS
from model.contract import InputContract, resolve_contract
from model.families import FamilyConfig
from model.interface import ModelConfig
from model.onnx_model import import_onnxruntime, read_onnx

from .. import options, predictions
from ..cluster.connect import init_ray
from ..cluster.resources import wait_for
from . import plan as input_plan
from .actor import DetectorActor
from .config import DetectConfig
from .read import TRANSIENT_ERRORS, fetch
from .sink import PartSink

CONFIG_FILE = "_config.yaml"  # the options of the last run (a leading underscore: Parquet readers skip it)

FETCH_CPUS = 0.5  # a read task: mostly waiting on storage, header parsing
WRITE_CPUS = 0.25  # light work: never starved by actors holding whole CPUs


def log(message: str) -> None:
    print(f"[detect] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the job

def run_detection(config: DetectConfig) -> dict[str, Any]:
    """Detect every input not yet in config.output; returns the summary the job prints. The
    checkpoint and the inputs are checked before Ray is joined or started."""
    started = time.time()
    config = config.resolved()  # its options were checked when it was made (DetectConfig)
    if uris.file_type(config.images) == pafs.FileType.NotFound:
        raise FileNotFoundError(f"--images {config.images}: no such folder or file")
    model_config, weights, model_id, recorded = read_model(config.checkpoint)
    contract, said = resolve_contract(recorded, uris.strip_credentials(config.checkpoint), config.min_size,
                                      config.max_size)
    for line in said:
        log(line)
    if isinstance(model_config, FamilyConfig):
        log(f"model: transformers' {model_config.describe()}; input: {contract.describe()}")
    if model_config.masks:
        log("the checkpoint has the mask head: each box's mask goes into the masks column"
            + (f"; stuff classes {list(model_config.stuff_classes)}: a panoptic PNG per image in "
               f"{uris.join(config.output, predictions.PANOPTIC_FOLDER)}" if model_config.stuff_classes else ""))
    run = run_parameters(config, model_config, model_id, contract, recorded)
    if config.overwrite:
        predictions.remove_parts(config.output)
        input_plan.remove_plan(config.output)
    else:
        check_same_run(config.output, run)
    init_ray()
    gpus, (low, high) = resources(config)  # before any work: a run that cannot fit stops here
    if gpus and isinstance(weights, bytes):
        check_onnx_on_gpu()
    try:
        plan = input_plan.load_or_make_plan(config.images, config.image_root, config.output, config.shard_size)
    except ray.exceptions.RayTaskError as e:  # the planning task's own error, without Ray's wrapping
        raise e.cause from None
    uris.write_bytes(uris.join(config.output, CONFIG_FILE), options.to_yaml(config).encode())  # the last run's
    done, previous_errors = resume(config.output, plan, config.retry_errors)
    todo = [s for s in range(len(plan.shard_rows)) if s not in done]
    log(f"{plan.inputs} inputs in {len(plan.shard_rows)} shard(s); {len(done)} already done, {len(todo)} to run")

    sink = PartSink(config.output, run, config.rows_per_file)
    if todo:
        weights = ray.put((model_config.to_dict(), weights))  # once, shared by every actor
        try:
            build_dataset(todo, config, contract, run, weights, gpus, low, high).write_datasink(
                sink, ray_remote_args={"num_cpus": WRITE_CPUS})
        except ray.exceptions.RayError as e:
            if not dead_actor(e):
                raise
            raise RuntimeError(actor_failure(e, config, contract)) from None
    summary = summarize(config, plan, sink.totals, previous_errors, time.time() - started, run)
    return {**summary, "gpus_per_actor": gpus}


def read_model(checkpoint: str) -> tuple[ModelConfig, Any, str, InputContract | None]:
    """(config, what the actors build the model from, weights id, recorded input contract): an
    exported ONNX graph's bytes (run with ONNX Runtime; the id is that of the checkpoint it was
    exported from), or the state_dict of any checkpoint PyTorch loads."""
    if checkpoint.endswith(".onnx"):
        return read_onnx(checkpoint)
    if checkpoint.endswith(".pt2"):
        raise ValueError(f"{checkpoint}: detection reads checkpoints (.pt, .pth, folders) and .onnx graphs, not "
                         "torch.export programs (.pt2); give the checkpoint it was exported from")
    model_config, state_dict, contract = read_checkpoint(checkpoint)
    return model_config, state_dict, weights_id(state_dict), contract


def check_onnx_on_gpu() -> None:
    """GPU actors run a graph with the CUDA execution provider: without it they would idle the GPU."""
    if "CUDAExecutionProvider" not in import_onnxruntime().get_available_providers():
        raise ValueError("the actors have GPUs but this onnxruntime has no CUDA execution provider: install "
                         "onnxruntime-gpu, or run the graph on CPUs with --device cpu")


def run_parameters(config: DetectConfig, model_config: ModelConfig, model_id: str, contract: InputContract,
                   recorded: InputContract | None) -> dict[str, Any]:
    """What the files' metadata records: enough to reproduce the rows, no credentials."""
    return {
        "model": model_id,
        "checkpoint": uris.strip_credentials(config.checkpoint),
        "runtime": "onnxruntime" if config.checkpoint.endswith(".onnx") else "torch",
        "preset": preset_name(model_config),
        "config": model_config.to_dict(),
        "score_threshold": config.score_threshold,
        "min_size": contract.min_size,
        "max_size": contract.max_size,
        "max_pixels": config.max_pixels,
        "contract": contract.to_dict(),
        "checkpoint_contract": recorded.to_dict() if recorded else None,  # what it was trained with
    }


def preset_name(model_config: ModelConfig) -> str:
    """The preset this architecture is (whatever its number of classes), or "custom"; a family's
    model: its model_type."""
    if isinstance(model_config, FamilyConfig):
        return model_config.model_type
    for name, preset in PRESETS.items():
        if preset.replace(num_classes=model_config.num_classes, aux_loss=model_config.aux_loss,
                          masks=model_config.masks, stuff_classes=model_config.stuff_classes) == model_config:
            return name
    return "custom"


def check_same_run(output: str, run: dict[str, Any]) -> None:
    previous = predictions.run_metadata(output)
    if previous is None:
        return
    keys = ("model", "score_threshold", "max_pixels", "contract")
    changed = {k: (previous.get(k), run[k]) for k in keys if previous.get(k) != run[k]}
    if changed:
        raise ValueError(
            f"{output} holds predictions of another run ({', '.join(f'{k}: {a} -> {b}' for k, (a, b) in changed.items())}); "
            "resume with the same parameters, or pass --overwrite / another output"
        )


# ---------------------------------------------------------------- resuming

def resume(output: str, plan: input_plan.Plan, retry_errors: bool) -> tuple[set[int], Counter]:
    """The shards whose part files hold all their rows (and, with retry_errors, no transient
    error), and their error counts. Part files of every other shard are deleted: that shard
    runs again whole, so no row can be written twice."""
    fs, _ = uris.resolve(output)
    files: dict[int, list[str]] = defaultdict(list)
    rows: Counter = Counter()
    for path in predictions.part_files(output):
        try:
            shard, count = predictions.parse_part_name(path.rsplit("/", 1)[-1])
        except ValueError:
            raise ValueError(f"{output} holds part files of an earlier version of this job ({path}); "
                             "pass --overwrite or another output") from None
        files[shard].append(path)
        rows[shard] += count
    complete = [s for s in files if s < len(plan.shard_rows) and rows[s] == plan.shard_rows[s]]
    with ThreadPoolExecutor(16) as pool:  # one footer read per file: its error counts
        kinds = dict(zip(complete, pool.map(lambda s: _error_counts(fs, files[s]), complete)))
    done = {s for s in complete
            if not (retry_errors and any(kinds[s].get(k) for k in TRANSIENT_ERRORS))}
    errors: Counter = Counter()
    for shard, paths in files.items():
        if shard in done:
            errors.update(kinds[shard])
            continue
        for path in paths:
            fs.delete_file(path)
    rerun = [s for s in files if s not in done]
    if rerun:
        log(f"running again {len(rerun)} shards that a previous run left incomplete or with transient errors")
    return done, errors


def _error_counts(fs: pafs.FileSystem, paths: list[str]) -> Counter:
    counts: Counter = Counter()
    for path in paths:
        counts.update(predictions.file_error_kinds(fs, path))
    return counts


# ---------------------------------------------------------------- resources

def resources(config: DetectConfig) -> tuple[float, tuple[int, int]]:
    """(GPUs per actor, (min, max) actors), after checking that they fit the cluster."""
    gpus = config.gpus_per_actor
    if gpus is None:
        if config.device == "cuda":
            gpus = 1.0
        elif config.device == "cpu":
            gpus = 0.0
        else:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    low, high = config.actors or (1, None)
    need = {"CPU": low * config.cpus_per_actor + FETCH_CPUS + WRITE_CPUS}
    if gpus:
        need["GPU"] = low * gpus
    wait_s = config.resource_wait if config.resource_wait is not None else (600.0 if gpus else 0.0)
    have = wait_for(need, wait_s, "the model actors plus one read and one write task",
                    "Use fewer --actors or a smaller --cpus-per-actor, --device cpu without GPUs, a larger cluster, "
                    "or --resource-wait SECONDS for an autoscaler to add nodes", log)
    if high is None:  # one actor per GPU, or CPU actors on half the CPUs (the rest read and decode)
        high = int(have.get("GPU", 0) / gpus) if gpus else int(have["CPU"] / 2 / config.cpus_per_actor)
    spare = int((have["CPU"] - FETCH_CPUS - WRITE_CPUS) / config.cpus_per_actor)
    high = max(low, min(high, spare))
    where = f"{gpus:g} GPU each" if gpus else (
        f"CPU ({config.cpus_per_actor:g} CPUs each"
        + ("; the cluster reports no GPU, --device cuda waits for GPU nodes)" if config.device == "auto" else ")"))
    log(f"{low}-{high} model actors on {where}; batches of {config.batch_size}, "
        f"windows of {config.images_per_window} images")
    return gpus, (low, high)


# ---------------------------------------------------------------- the dataset

def build_dataset(todo: list[int], config: DetectConfig, contract: InputContract, run: dict[str, Any], weights,
                  gpus: float, low: int, high: int) -> ray.data.Dataset:
    per_task = min(config.images_per_read_task, config.images_per_window)
    with warnings.catch_warnings():
        # Ray 2.60 bounds an actor pool's restarts only through its remote args, deprecated for
        # removal in 2.64 (this project pins 2.60); unbounded, Ray restarts a dying actor forever.
        warnings.simplefilter("ignore", RayDeprecationWarning)
        return (
            input_plan.read_shards(config.output, todo, num_cpus=FETCH_CPUS)
            .repartition(target_num_rows_per_block=per_task)  # streamed: a read task's share of a shard
            .map_batches(fetch,  # type: ignore[arg-type]  # Ray's type of fn leaves out its fn_kwargs
                         batch_size=per_task, batch_format="pyarrow", num_cpus=FETCH_CPUS,
                         fn_kwargs={"contract": contract, "max_pixels": config.max_pixels,
                                    "attempts": config.read_attempts})
            .map_batches(DetectorActor, batch_size=config.images_per_window, batch_format="pyarrow",
                         compute=ActorPoolStrategy(min_size=low, max_size=high),
                         num_cpus=config.cpus_per_actor, num_gpus=gpus,
                         max_restarts=config.actor_restarts,
                         fn_constructor_kwargs={"weights": weights, "model_id": run["model"],
                                                "score_threshold": config.score_threshold,
                                                "batch_size": config.batch_size, "contract": contract.to_dict(),
                                                "cpus": config.cpus_per_actor})
        )


def dead_actor(error: ray.exceptions.RayError) -> bool:
    """Whether the run failed because a model actor died for good."""
    return isinstance(error, (ray.exceptions.ActorDiedError, ray.exceptions.OutOfMemoryError)) or any(
        isinstance(cause, (ray.exceptions.ActorDiedError, ray.exceptions.OutOfMemoryError))
        for cause in (getattr(error, "cause", None), error.__cause__))


def actor_failure(error: ray.exceptions.RayError, config: DetectConfig, contract: InputContract) -> str:
    """One line: why the run stopped, and what to change."""
    text = " ".join(str(error).split())
    memory = (f"images resized to {contract.min_size} / {contract.max_size} px in batches of {config.batch_size}: "
              "lower --batch-size, or give each actor more memory")
    if isinstance(error, ray.exceptions.OutOfMemoryError) or "low on memory" in text:
        why = f"Ray's memory monitor killed it, the host being low on memory ({memory})"
    else:  # a kill, the kernel's OOM killer or a crash look alike from here
        detail = text.split("Worker exit detail: ", 1)[-1].split(". ", 1)[0][:200]
        why = f"its process died ({detail}); if the host ran out of memory ({memory})"
    return (f"a model actor died {config.actor_restarts + 1} times and is not restarted again: {why}. Shards written "
            "so far are kept: the same command resumes")


# ---------------------------------------------------------------- the summary

def summarize(config: DetectConfig, plan: input_plan.Plan, totals: dict[str, Any], previous_errors: Counter,
              seconds: float, run: dict[str, Any]) -> dict[str, Any]:
    """Counts from the write results and the part files' names: nothing read back per row."""
    rows: Counter = Counter()
    for path in predictions.part_files(config.output):
        shard, count = predictions.parse_part_name(path.rsplit("/", 1)[-1])
        rows[shard] += count
    expected = plan.shard_rows
    processed = totals["rows"]
    calls = totals["calls"]
    return {
        "inputs": plan.inputs,
        "shards": len(expected),
        "processed": processed,
        "skipped": sum(rows.values()) - processed,
        "rows": sum(rows.values()),
        "duplicates": sum(max(0, rows[s] - n) for s, n in enumerate(expected)),
        "missing_rows": sum(max(0, n - rows[s]) for s, n in enumerate(expected)),  # not errors["missing"]: files
        "errors": dict(previous_errors + Counter(totals["errors"])),
        "batch_fill": round(totals["detected"] / (calls * config.batch_size), 3) if calls else None,
        "images_per_second": round(processed / seconds, 2) if seconds > 0 else None,
        "seconds": round(seconds, 1),
        "output": config.output,
        "model": run["model"],
    }
