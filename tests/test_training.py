"""Ray Train: step counts over shards, resume, recovery from a killed worker, fine-tuning."""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from model import build_detr, load_checkpoint
from model.checkpoint import safe_torch_load
from pipeline.training import TrainConfig, _build_model, _run_config, fit, run_training, warm_up

from .conftest import SHIPPED
from .local_cluster import STATE_API, job_env


def _config(shapes: dict, storage: Path, name: str, **overrides) -> TrainConfig:
    settings = dict(
        annotations=shapes["train_annotations"], images=shapes["train_images"], storage=str(storage), name=name,
        preset="detr-tiny", model_overrides={"num_queries": 10}, epochs=1, batch_size=4, workers=1,
        cpus_per_worker=1.0, data_cpus=0.5, augment_scale=0.15,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def _payload(uri: str) -> dict:
    return safe_torch_load(Path(uri).read_bytes(), uri)


def _checkpoints(run: str) -> list[Path]:
    return sorted(Path(run).glob("checkpoint_*/checkpoint.pt"))


def _registered_epochs(run: str) -> list[int]:
    """Epochs of the checkpoints Ray Train has registered (what a restart resumes from)."""
    snapshot = Path(run) / "checkpoint_manager_snapshot.json"
    try:
        results = json.loads(snapshot.read_text())["checkpoint_results"]
    except (OSError, ValueError, KeyError):
        return []
    return sorted(r["metrics"]["epoch"] for r in results)


def _loadable_epochs(run: str) -> list[int]:
    """Epochs of the complete checkpoints (a worker killed while one is being copied to
    storage leaves a partial file behind, which Ray never registers)."""
    epochs = []
    for path in _checkpoints(run):
        try:
            epochs.append(_payload(str(path))["epoch"])
        except Exception:
            pass
    return sorted(epochs)


def test_two_workers_step_count_validation_and_retention(ray_cluster, tiny_shapes, tmp_path):
    batch = 3
    summary = run_training(_config(
        tiny_shapes, tmp_path, "two", workers=2, batch_size=batch, epochs=2, num_to_keep=1, log_every=1,
        val_annotations=tiny_shapes["val_annotations"], val_images=tiny_shapes["val_images"],
    ))
    per_worker = 16 // 2  # equal split of the 16 training images
    assert summary["metrics"]["steps"] == 2 * math.ceil(per_worker / batch)
    assert summary["metrics"]["epoch"] == 2
    # the progress lines are kept with the run, one JSON line each
    progress = [json.loads(line) for line in (tmp_path / "two" / "progress" / "epoch_0002.jsonl").open()]
    assert [(p["epoch"], p["step"]) for p in progress] == [(2, 1), (2, 2), (2, 3)]
    assert all(p["images_per_s"] > 0 and p["steps"] == 3 for p in progress)
    # retention: the last checkpoint only, and the best by validation AP beside it
    assert [_payload(str(p))["epoch"] for p in _checkpoints(summary["run"])] == [2]
    best = _payload(summary["best_checkpoint"])
    assert summary["best_checkpoint"] == str(tmp_path / "two" / "best" / "checkpoint.pt")
    assert best["extra"]["metrics"]["AP"] == best["extra"]["best_AP"] >= summary["metrics"]["AP"]
    assert best["epoch"] in (1, 2) and (best["epoch"] == 1 or best["extra"]["best_AP"] == summary["metrics"]["AP"])
    assert 0.0 <= summary["metrics"]["AP50"] <= 1.0 and "AP" in summary["metrics"]
    assert all(math.isfinite(summary["metrics"][k]) for k in ("loss", "loss_ce", "loss_bbox", "loss_giou"))
    model, config = load_checkpoint(summary["checkpoint"])
    assert config.num_classes == 12 and config.num_queries == 10  # synthetic ids go up to 11
    assert summary["best_checkpoint"] is not None


def test_fit_trains_on_the_datasets_it_is_given(ray_cluster, tiny_shapes, tmp_path):
    """A prepared dataset (here 8 of the 16 samples, decoded once and materialised) replaces
    the stream fit would build from the annotations."""
    from pipeline.coco import load_coco
    from pipeline.data import records_of, sample_stream

    cfg = _config(tiny_shapes, tmp_path, "prepared")
    samples = sample_stream(records_of(load_coco(cfg.annotations, cfg.images)), cfg.augment).limit(8)
    samples = samples.materialize()
    result, train_set = fit(cfg, {"train": samples})
    assert train_set.num_classes == 12  # the model's classes still come from the annotations
    assert result.metrics["steps"] == 8 // cfg.batch_size  # not 16 // 4: the stream was not built


def test_training_workers_are_not_deprioritised(ray_cluster, tmp_path):
    """Ray starts worker processes at niceness 15; the training workers run at 0, as a driver does."""
    import ray.train.torch

    seen = tmp_path / "niceness"

    def loop() -> None:
        seen.write_text(str(os.nice(0)))  # Ray keeps only checkpointed metrics: report through a file

    trainer = ray.train.torch.TorchTrainer(
        loop, scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
        run_config=_run_config(_config({"train_annotations": "", "train_images": ""}, tmp_path, "nice")),
    )
    trainer.fit()
    assert seen.read_text() == "0"
    assert ray_cluster.get(ray_cluster.remote(lambda: os.nice(0)).remote()) > 0  # other workers: Ray's default


def test_resume_continues_at_the_next_epoch(ray_cluster, tiny_shapes, tmp_path):
    first = run_training(_config(tiny_shapes, tmp_path, "resume", epochs=1))
    steps_per_epoch = first["metrics"]["steps"]
    assert _payload(first["checkpoint"])["epoch"] == 1
    second = run_training(_config(tiny_shapes, tmp_path, "resume", epochs=2))
    assert second["metrics"]["epoch"] == 2
    assert second["metrics"]["steps"] == 2 * steps_per_epoch  # epoch 1 was not trained again
    assert _payload(second["checkpoint"])["epoch"] == 2
    assert len(_checkpoints(second["run"])) == 2


def _train_worker_pids() -> list[int]:
    from ray.util.state import list_actors

    actors = list_actors(address=os.environ[STATE_API],  # this test process's Ray (tests/local_cluster.py)
                         filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    return [a.pid for a in actors if a.pid]


def test_killed_worker_resumes_from_last_checkpoint(ray_cluster, tiny_shapes, tmp_path):
    # ResNet-18 backbone: an epoch long enough (~7 s) for the kill to land inside epoch 2
    config = _config(tiny_shapes, tmp_path, "faults", epochs=2, batch_size=1, max_failures=1,
                     model_overrides={"num_queries": 10, "backbone": "resnet18"})
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(summary=run_training(config)), daemon=True)
    thread.start()
    run = str(tmp_path / "faults")
    deadline = time.time() + 300
    while not _registered_epochs(run) and time.time() < deadline:  # epoch 1 is stored and registered
        time.sleep(0.2)
    assert _registered_epochs(run) == [1], "no registered checkpoint within 300 s"
    time.sleep(1.0)  # into epoch 2 (16 steps of one image)
    pids = _train_worker_pids()
    assert pids, "no live training worker found"
    os.kill(pids[0], signal.SIGKILL)
    thread.join(timeout=600)
    assert not thread.is_alive()
    summary = outcome["summary"]
    assert summary["metrics"]["epoch"] == 2
    assert summary["metrics"]["steps"] == 2 * 16  # steps restored with the checkpoint: no epoch counted twice
    assert pids[0] not in _train_worker_pids()
    # resumed from epoch 1's checkpoint: epoch 1 was not trained (and stored) a second time
    assert _registered_epochs(summary["run"]) == [1, 2]
    stored = _loadable_epochs(summary["run"])
    # a kill between epoch 2's file landing and its registration leaves that file behind, and
    # epoch 2 is rightly trained again: only epochs after the registered checkpoint may repeat
    assert stored.count(1) == 1 and set(stored) == {1, 2}


def test_fine_tune_from_reference_weights_reinitialises_the_class_head(small_fixture, tmp_path, tiny_shapes):
    path = tmp_path / "detr-small.pth"
    torch.save({"model": small_fixture["state_dict"], "args": argparse.Namespace(nheads=4, dropout=0.0)}, path)
    config = _config(tiny_shapes, tmp_path, "ft", init=str(path), model_overrides={})
    model, detr_config = _build_model(config, num_classes=12)
    assert detr_config.num_classes == 12 and model.class_embed.out_features == 13
    state = model.state_dict()
    for key, value in small_fixture["state_dict"].items():
        if not key.startswith("class_embed."):
            assert torch.equal(state[key], value), key
    assert model.training


def test_fine_tune_run(ray_cluster, small_fixture, tmp_path, tiny_shapes):
    path = tmp_path / "detr-small.pth"
    torch.save({"model": small_fixture["state_dict"], "args": argparse.Namespace(nheads=4, dropout=0.0)}, path)
    summary = run_training(_config(tiny_shapes, tmp_path, "ftrun", init=str(path), model_overrides={}))
    model, config = load_checkpoint(summary["checkpoint"])
    assert (config.hidden_dim, config.nheads, config.num_classes) == (64, 4, 12)
    trained = model.state_dict()["transformer.decoder.norm.weight"]
    assert not torch.equal(trained, small_fixture["state_dict"]["transformer.decoder.norm.weight"])


def test_unknown_val_images_is_explained(tiny_shapes, tmp_path):
    with pytest.raises(ValueError, match="--val-images"):
        run_training(_config(tiny_shapes, tmp_path, "x", val_annotations=tiny_shapes["val_annotations"]))


def test_recipe_of_a_from_scratch_preset():
    """jobs/train.py: detr-tiny trains with its recipe, explicit flags win, --init keeps the paper's."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_job", Path(__file__).parents[1] / "jobs" / "train.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    required = ["--annotations", "a.json", "--images", "img", "--storage", "runs", "--name", "r"]
    scratch = job.parse_args(required)
    assert (scratch.lr, scratch.lr_backbone, scratch.warmup_steps, scratch.encoder_matches, scratch.batch_size) == (
        3e-4, 3e-4, 200, 4, 8)
    assert job.parse_args(required + ["--lr", "1e-3", "--batch-size", "2"]).lr == 1e-3
    assert job.parse_args(required + ["--lr", "1e-3", "--batch-size", "2"]).batch_size == 2
    tuned = job.parse_args(required + ["--init", "ckpt.pt"])
    paper = TrainConfig("", "", "", "")
    assert (tuned.lr, tuned.lr_backbone, tuned.warmup_steps, tuned.encoder_matches) == (
        paper.lr, paper.lr_backbone, 0, 1)


def test_warm_up_is_linear_then_hands_over_to_the_step_drop():
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.1)
    seen = []
    for step in range(6):
        warm_up(optimizer, step, 4)
        seen.append(optimizer.param_groups[0]["lr"])
    assert seen == pytest.approx([7.5e-5, 1.5e-4, 2.25e-4, 3e-4, 3e-4, 3e-4])
    scheduler.step()  # an epoch ends after the warm-up: the drop applies
    assert optimizer.param_groups[0]["lr"] == pytest.approx(3e-5)


@pytest.mark.own_ray
def test_as_many_workers_as_cores_stops_with_a_message(tiny_shapes, tmp_path):
    """`jobs/train.py --workers N` on an N-core machine (its own local Ray): the workers would
    take every CPU and the decode/augment tasks would never run, so Ray would wait forever.
    The job stops at once, saying what is short and what to change."""
    import subprocess
    import sys

    cores = os.cpu_count()
    proc = subprocess.run(
        [sys.executable, "jobs/train.py", "--annotations", tiny_shapes["train_annotations"],
         "--images", tiny_shapes["train_images"], "--storage", str(tmp_path), "--name", "full",
         "--workers", str(cores), "--epochs", "1"],
        cwd=Path(__file__).resolve().parents[1], env=job_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("train: the cluster cannot hold this run: it needs ")
    assert f"({cores} training workers of 1 CPU plus one decode/augment task of 0.5 CPU)" in last
    assert f"has {cores:g} CPU" in last and "fewer --workers" in last
    assert not list(tmp_path.glob("full/checkpoint_*"))


def test_backbone_weights_are_loaded_and_frozen_layers_keep_them(tmp_path):
    """--backbone-weights: a torchvision ResNet state_dict (as ImageNet's is saved) lands in the
    backbone, BatchNorm statistics included; frozen layers keep exactly those values."""
    import torchvision

    from pipeline.training import _build_model

    torch.manual_seed(0)
    resnet = torchvision.models.resnet18()
    for module in resnet.modules():  # non-trivial statistics, as a trained network has
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    torch.save(resnet.state_dict(), tmp_path / "resnet18.pt")
    cfg = TrainConfig("", "", "", "", preset="detr-r50", model_overrides={"backbone": "resnet18"},
                      backbone_weights=str(tmp_path / "resnet18.pt"))
    model, _ = _build_model(cfg, num_classes=5)
    body = model.backbone[0].body.state_dict()
    expected = resnet.state_dict()
    loaded = [k for k in body if not k.endswith("num_batches_tracked")]
    assert loaded and all(torch.equal(body[k], expected[k]) for k in loaded)
    assert "bn1.running_mean" in loaded and "layer4.1.bn2.running_var" in loaded

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    out = model(torch.randn(1, 3, 64, 64))
    (out["pred_logits"].sum() + out["pred_boxes"].sum()).backward()
    optimizer.step()
    after = model.backbone[0].body.state_dict()
    frozen = [k for k in loaded if k.startswith(("conv1", "bn1", "layer1")) or "bn" in k or "downsample.1" in k]
    assert all(torch.equal(after[k], expected[k]) for k in frozen)  # conv1, layer1, every (frozen) BatchNorm
    assert not torch.equal(after["layer2.0.conv1.weight"], expected["layer2.0.conv1.weight"])  # the rest learns

    for name, state in (("other.pt", {"fc.weight": torch.zeros(3)}), ("partial.pt", {"conv1.weight": torch.zeros(3)})):
        torch.save(state, tmp_path / name)
        with pytest.raises(ValueError, match="is not a state_dict of this backbone"):
            _build_model(TrainConfig("", "", "", "", preset="detr-r50", model_overrides={"backbone": "resnet18"},
                                     backbone_weights=str(tmp_path / name)), num_classes=5)


def test_a_paper_preset_without_pretrained_weights_is_refused(tiny_shapes, tmp_path):
    import subprocess
    import sys

    from pipeline.training import check_initialisation

    check_initialisation(TrainConfig("", "", "", ""))  # detr-tiny trains from scratch by design
    check_initialisation(TrainConfig("", "", "", "", preset="detr-r50", from_scratch=True))
    check_initialisation(TrainConfig("", "", "", "", preset="detr-r50", init="ck.pt"))
    with pytest.raises(ValueError, match="no such file"):
        check_initialisation(TrainConfig("", "", "", "", preset="detr-r50", backbone_weights=str(tmp_path / "x.pt")))
    proc = subprocess.run(
        [sys.executable, "jobs/train.py", "--annotations", tiny_shapes["train_annotations"], "--images",
         tiny_shapes["train_images"], "--storage", str(tmp_path), "--name", "r50", "--preset", "detr-r50"],
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        "train: detr-r50 starts from an ImageNet backbone: give --backbone-weights FILE (a torchvision ResNet "
        "state_dict, see docs/training.md) or --init CHECKPOINT, or --from-scratch to train it from random "
        "weights deliberately"]


def test_dry_run_reports_the_inputs_and_trains_nothing(tmp_path):
    import subprocess
    import sys

    from pipeline.dry_run import dry_run
    from pipeline.synthetic import SyntheticConfig, make_synthetic

    shapes = make_synthetic(str(tmp_path / "shapes"), train=12, val=4, seed=3,
                            config=SyntheticConfig(min_side=64, max_side=96, max_objects=2, min_object=12, max_object=30))
    ok = dry_run(_config(shapes, tmp_path / "runs", "dry", val_annotations=shapes["val_annotations"],
                         val_images=shapes["val_images"]), check_all_files=True)
    assert ok["ok"] and ok["train"]["images"] == 12 and ok["val"]["images"] == 4 and ok["train"]["missing_files"] == 0
    assert ok["train"]["files_checked"] == 12 and ok["resources"]["at_least"] == {"CPU": 1.5}
    assert ok["model"]["preset"] == "detr-tiny" and ok["storage"] == {
        "run": str(tmp_path / "runs" / "dry"), "resumes": False, "checkpoints": 0, "keep": 3}

    coco = json.loads(Path(shapes["train_annotations"]).read_text())
    image = coco["images"][0]
    coco["annotations"] += [
        {"id": 9001, "image_id": image["id"], "category_id": coco["categories"][0]["id"], "iscrowd": 0, "area": 1,
         "bbox": [image["width"] - 5, 2, 20, 10]},  # reaches outside: clipped
        {"id": 9002, "image_id": image["id"], "category_id": coco["categories"][0]["id"], "iscrowd": 0, "area": 1,
         "bbox": [image["width"] + 5, 2, 20, 10]},  # entirely outside: dropped
    ]
    Path(shapes["train_annotations"]).write_text(json.dumps(coco))
    (Path(shapes["train_images"]) / coco["images"][1]["file_name"]).unlink()
    proc = subprocess.run(
        [sys.executable, "jobs/train.py", "--annotations", shapes["train_annotations"], "--images",
         shapes["train_images"], "--storage", str(tmp_path / "runs"), "--name", "dry", "--preset", "detr-r50",
         "--workers", "4", "--gpu", "--dry-run", "--check-all-files"],
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    headline, line = proc.stdout.strip().splitlines()[-2:]
    summary = json.loads(line)
    assert headline.startswith("dry run: the run would fail; 12 training images")
    train = summary["train"]
    assert (train["missing_files"], train["clipped_boxes"], train["dropped_boxes"]) == (1, 1, 1)
    assert train["missing_examples"] == [coco["images"][1]["file_name"]] and len(train["problems"]) >= 3
    assert summary["initialisation"].startswith("detr-r50 starts from an ImageNet backbone")
    assert summary["resources"]["at_least"] == {"CPU": 4.5, "GPU": 4} and summary["model"]["parameters"] > 4e7
    assert not (tmp_path / "runs").exists()  # nothing trained, nothing written


def _data_parallel_worker(rank: int, world_size: int, port: int, folder: str) -> None:
    """Three training steps (pipeline.training.train_step) on 4 images, split over world_size
    DistributedDataParallel ranks; rank 0 saves the parameters."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from model import build_criterion, build_detr
    from pipeline.training import _param_groups, train_step

    torch.use_deterministic_algorithms(True)
    if world_size > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.manual_seed(0)  # the same initial weights and data on every rank
    # the paper's one-stage DETR and frozen BatchNorm (batch statistics are per worker by nature)
    model = build_detr("detr-tiny", num_classes=5, two_stage=False, distinct_query_iou=None,
                       backbone_norm="frozen_bn").double().train()
    images = torch.randn(4, 3, 64, 96, dtype=torch.float64)
    mask = torch.zeros(4, 64, 96, dtype=torch.bool)
    # image i has i + 1 boxes: the ranks hold 3 and 7, so each must normalise by the mean, 5
    targets = [{"labels": torch.arange(i + 1) % 4 + 1,
                "boxes": torch.rand(i + 1, 2, dtype=torch.float64).mul(0.5).add(0.25).repeat(1, 2).mul(
                    torch.tensor([1.0, 1.0, 0.4, 0.4], dtype=torch.float64))} for i in range(4)]
    cfg = TrainConfig("", "", "", "", lr=1e-4, lr_backbone=1e-4)
    criterion = build_criterion(5, model.config.dec_layers)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    ddp = DistributedDataParallel(model) if world_size > 1 else model
    share = slice(rank * 4 // world_size, (rank + 1) * 4 // world_size)
    try:
        for step in range(3):
            train_step(ddp, criterion, optimizer, (images[share], mask[share], targets[share]), cfg, step)
        if rank == 0:
            torch.save(model.state_dict(), os.path.join(folder, f"{world_size}.pt"))
    finally:
        if world_size > 1:
            dist.destroy_process_group()


def test_two_workers_of_batch_b_train_as_one_worker_of_batch_2b(tmp_path):
    """Data parallelism proven, not assumed: after three steps the parameters of 2 workers x
    batch 2 equal those of 1 worker x batch 4 (the loss's box normalisation, gradient averaging,
    clipping and AdamW included)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _data_parallel_worker(0, 1, port, str(tmp_path))
    mp.start_processes(_data_parallel_worker, args=(2, port, str(tmp_path)), nprocs=2, start_method="spawn")
    one, two = torch.load(tmp_path / "1.pt"), torch.load(tmp_path / "2.pt")
    torch.manual_seed(0)
    start = build_detr("detr-tiny", num_classes=5, two_stage=False, distinct_query_iou=None,
                       backbone_norm="frozen_bn").double().state_dict()
    moved = [k for k in one if not torch.equal(one[k], start[k])]
    assert len(moved) > 50  # the steps did train
    worst = max(float((one[k] - two[k]).norm() / one[k].norm()) for k in one if one[k].norm() > 0)
    assert worst <= 1e-5, worst


def test_each_epoch_is_a_full_permutation_shared_out_without_overlap():
    from pipeline.data import epoch_order, worker_share

    orders = [epoch_order(103, seed=7, epoch=e) for e in range(3)]
    assert all(sorted(o.tolist()) == list(range(103)) for o in orders)  # every record, once
    assert not np.array_equal(orders[0], orders[1]) and np.array_equal(orders[2], epoch_order(103, 7, 2))
    shares = [worker_share(orders[0], rank, 4) for rank in range(4)]
    assert [len(s) for s in shares] == [25] * 4  # the same steps on every worker
    assert len(set(np.concatenate(shares).tolist())) == 100  # no overlap; 3 sit this epoch out
    # neighbours change: the records that share rank 0's first batch of 4 differ epoch to epoch
    first = [set(worker_share(o, 0, 4)[:4].tolist()) for o in orders]
    assert first[0] != first[1] != first[2]


def _validate_worker(rank: int, world_size: int, port: int, shapes: dict, folder: str) -> None:
    import pyarrow.parquet as pq
    import torch.distributed as dist

    from pipeline.coco import load_coco
    from pipeline.data import records_of
    from pipeline.evaluation import CocoScorer
    from pipeline.training import detect_images, gather, validate

    if world_size > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        model, _ = load_checkpoint(str(SHIPPED))  # trained: its detections and AP are not all alike
        records = records_of(load_coco(shapes["val_annotations"], shapes["val_images"]))
        cfg = TrainConfig("", "", "", "", batch_size=3)
        tables = gather(detect_images(model, records[rank::world_size], model.contract, cfg.batch_size), world_size)
        scorer = CocoScorer(load_coco(shapes["val_annotations"], shapes["val_images"]).raw) if rank == 0 else None
        metrics = validate(model, records, cfg, model.contract, scorer, rank, world_size)
        if rank == 0:
            pq.write_table(pa.concat_tables(tables).sort_by("image_id"), Path(folder, f"{world_size}.parquet"))
            Path(folder, f"{world_size}.json").write_text(json.dumps(metrics))
    finally:
        if world_size > 1:
            dist.destroy_process_group()


def test_sharded_validation_equals_one_worker(demo_val, tmp_path):
    """Two workers each detect every other image; what rank 0 gathers and scores is what one
    worker detects alone, row for row."""
    import socket

    import pyarrow.parquet as pq
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _validate_worker(0, 1, port, demo_val, str(tmp_path))
    mp.start_processes(_validate_worker, args=(2, port, demo_val, str(tmp_path)), nprocs=2, start_method="spawn")
    one, two = (pq.read_table(tmp_path / f"{n}.parquet").to_pylist() for n in (1, 2))
    assert [r["image_id"] for r in one] == [r["image_id"] for r in two] == list(range(1, 13))
    assert sum(len(r["scores"]) for r in one) > 12  # the checkpoint finds shapes
    for a, b in zip(one, two):
        assert a["labels"] == b["labels"]
        np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-6)
        np.testing.assert_allclose(a["boxes"], b["boxes"], atol=1e-4)
    metrics = [json.loads((tmp_path / f"{n}.json").read_text()) for n in (1, 2)]
    assert metrics[0] == metrics[1] and metrics[0]["AP"] > 0.2


def test_validation_detections_are_bulk_detections(ray_cluster, demo_val, tmp_path):
    """The AP training prints for a checkpoint is the AP of jobs/detect.py then jobs/evaluate.py
    with it, at their defaults (sizes: the checkpoint's contract; the default score threshold):
    the same detections, image for image."""
    from pipeline import predictions
    from pipeline.coco import load_coco
    from pipeline.detection import DetectConfig, run_detection
    from pipeline.evaluation import evaluate_files, evaluate_predictions, CocoScorer
    from pipeline.training import detect_images

    model, _ = load_checkpoint(str(SHIPPED))
    dataset = load_coco(demo_val["val_annotations"], demo_val["val_images"])
    validation = detect_images(model, dataset.records(), model.contract, batch_size=8)
    output = str(tmp_path / "predictions")
    run_detection(DetectConfig(images=demo_val["val_annotations"], image_root=demo_val["val_images"],
                               output=output, checkpoint=str(SHIPPED), actors=(1, 1)))
    detected = {r["image_id"]: r for r in predictions.read_predictions(output).to_pylist()}
    assert len(detected) == validation.num_rows == 12
    for row in validation.to_pylist():
        other = detected[row["image_id"]]
        assert row["labels"] == other["labels"] and row["path"] == other["path"]
        np.testing.assert_allclose(row["scores"], other["scores"], atol=1e-4)
        np.testing.assert_allclose(row["boxes"], other["boxes"], atol=1e-2)
    validated = evaluate_predictions([validation], CocoScorer(dataset.raw))["metrics"]
    assert validated == evaluate_files(output, demo_val["val_annotations"])["metrics"]
    assert validated["AP"] > 0.2  # a trained checkpoint: the equality is not that of two empty sets
