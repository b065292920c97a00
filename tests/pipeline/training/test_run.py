"""Training runs on Ray Train: step counts over shards, retention, resume, recovery from a killed
worker, fine-tuning, and runs refused before they start."""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import pytest
import torch

from model.checkpoint import load_checkpoint, safe_torch_load
from pipeline import options
from pipeline.training.config import TrainConfig
from pipeline.training.run import check_initialisation, run_training
from tests import REPO
from tests.local_cluster import STATE_API, job_env
from tests.pipeline.training import small_run, tensorboard_scalars


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


def test_two_workers_step_count_validation_retention_and_what_a_watcher_sees(ray_cluster, tiny_shapes, tmp_path):
    batch = 3
    config = small_run(
        tiny_shapes, tmp_path, "two", workers=2, batch_size=batch, epochs=2, keep=1, log_every=1,
        val_annotations=tiny_shapes["val_annotations"], val_images=tiny_shapes["val_images"],
        mlflow=str(tmp_path / "mlflow"),
    )
    summary = run_training(config)
    # the run folder keeps the options it ran with: the file replays the same run
    replayed = TrainConfig(**options.from_file(str(tmp_path / "two" / "config.yaml"), TrainConfig))
    assert replayed == config.resolved() and replayed.resolved() == replayed
    per_worker = 16 // 2  # equal split of the 16 training images
    assert summary["metrics"]["steps"] == 2 * math.ceil(per_worker / batch)
    assert summary["metrics"]["epoch"] == 2
    # the progress lines are kept with the run, one JSON line each, then the epoch's metrics
    epochs = [[json.loads(line) for line in (tmp_path / "two" / "progress" / f"epoch_000{e}.jsonl").open()]
              for e in (1, 2)]
    assert [(p["epoch"], p["step"]) for p in epochs[1][:-1]] == [(2, 1), (2, 2), (2, 3)]
    assert all(p["images_per_s"] > 0 and p["steps"] == 3 for p in epochs[1][:-1])
    ap = [lines[-1]["epoch_metrics"]["AP"] for lines in epochs]
    assert ap[1] == summary["metrics"]["AP"]
    # retention: the last checkpoint only, and beside it the best by validation AP (the earliest
    # of equals: an epoch must do better to replace it)
    assert [_payload(str(p))["epoch"] for p in _checkpoints(summary["run"])] == [2]
    best = _payload(summary["best_checkpoint"])
    assert summary["best_checkpoint"] == str(tmp_path / "two" / "best" / "checkpoint.pt")
    assert best["epoch"] == (2 if ap[1] > ap[0] else 1)
    assert best["extra"]["metrics"]["AP"] == best["extra"]["best_AP"] == max(ap)
    assert 0.0 <= summary["metrics"]["AP50"] <= 1.0 and "AP" in summary["metrics"]
    assert all(math.isfinite(summary["metrics"][k]) for k in ("loss", "loss_ce", "loss_bbox", "loss_giou"))
    model, config = load_checkpoint(summary["checkpoint"])
    assert config.num_classes == 12 and config.num_queries == 10  # synthetic ids go up to 11
    # TensorBoard: every step once, each loss term (final and auxiliary), the learning rates,
    # the gradient norm and images/s; each epoch's stats at its last step
    scalars = tensorboard_scalars(summary["run"])
    for tag in ("train/loss", "train/loss_ce", "train/loss_giou_0", "train/lr", "train/lr_backbone", "train/grad_norm"):
        assert [step for step, _ in scalars[tag]] == [1, 2, 3, 4, 5, 6], tag
    assert all(math.isfinite(v) and v > 0 for _, v in scalars["train/grad_norm"])
    assert [s for s, _ in scalars["train/images_per_s"]] == [1, 2, 3, 4, 5, 6]  # a progress line per step
    assert scalars["val/AP"] == [(3, pytest.approx(ap[0])), (6, pytest.approx(ap[1]))]
    assert scalars["epoch/loss"] == [(3, pytest.approx(epochs[0][-1]["epoch_metrics"]["loss"])),
                                     (6, pytest.approx(summary["metrics"]["loss"]))]
    assert (tmp_path / "two" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # MLflow: one finished run with the settings, the same scalars and the best checkpoint
    from mlflow.tracking import MlflowClient

    mlflow = MlflowClient(f"sqlite:///{tmp_path}/mlflow/mlflow.db")
    [run] = mlflow.search_runs([mlflow.get_experiment_by_name("detr-ray").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["workers"] == "2"
    assert [m.step for m in mlflow.get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3, 4, 5, 6]
    assert [m.value for m in mlflow.get_metric_history(run.info.run_id, "val/AP")] == pytest.approx(ap)
    assert [a.path for a in mlflow.list_artifacts(run.info.run_id, "best")] == ["best/checkpoint.pt"]


def test_fine_tune_then_resume_at_the_next_epoch(ray_cluster, small_fixture, tiny_shapes, tmp_path):
    """A run fine-tunes a reference release file (its class head re-made for the shapes' classes);
    the same command with more epochs resumes it at the next epoch."""
    path = tmp_path / "detr-small.pth"
    torch.save({"model": small_fixture["state_dict"], "args": argparse.Namespace(nheads=4, dropout=0.0)}, path)
    config = partial(small_run, tiny_shapes, tmp_path, "resume", init=str(path), model_overrides={})
    first = run_training(config(epochs=1))
    model, fine_tuned = load_checkpoint(first["checkpoint"])
    assert (fine_tuned.hidden_dim, fine_tuned.nheads, fine_tuned.num_classes) == (64, 4, 12)
    trained = model.state_dict()["transformer.decoder.norm.weight"]
    assert not torch.equal(trained, small_fixture["state_dict"]["transformer.decoder.norm.weight"])
    steps_per_epoch = first["metrics"]["steps"]
    assert _payload(first["checkpoint"])["epoch"] == 1
    second = run_training(config(epochs=2))
    assert second["metrics"]["epoch"] == 2
    assert second["metrics"]["steps"] == 2 * steps_per_epoch  # epoch 1 was not trained again
    assert _payload(second["checkpoint"])["epoch"] == 2
    assert len(_checkpoints(second["run"])) == 2
    assert [s for s, _ in tensorboard_scalars(second["run"])["train/loss"]] == list(range(1, 2 * steps_per_epoch + 1))


def _train_worker_pids() -> list[int]:
    from ray.util.state import list_actors

    actors = list_actors(address=os.environ[STATE_API],  # this test process's Ray (tests/local_cluster.py)
                         filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    return [a.pid for a in actors if a.pid]


def test_killed_worker_resumes_from_last_checkpoint_and_workers_are_not_deprioritised(ray_cluster, tiny_shapes,
                                                                                     tmp_path):
    # ResNet-18 backbone: an epoch long enough (~7 s) for the kill to land inside epoch 2
    config = small_run(tiny_shapes, tmp_path, "faults", epochs=2, batch_size=1, max_failures=1,
                     model_overrides={"num_queries": 10, "backbone": "resnet18", "masked_backbone": False})
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(summary=run_training(config)), daemon=True)
    thread.start()
    run = str(tmp_path / "faults")
    deadline = time.time() + 300
    while not _registered_epochs(run) and thread.is_alive() and time.time() < deadline:  # epoch 1 registered
        time.sleep(0.2)
    assert _registered_epochs(run) == [1], f"no registered checkpoint within 300 s (run: {outcome or 'failed'})"
    # registered: the worker reported epoch 1 (its last act in that epoch) and went on into epoch 2
    pids = _train_worker_pids()
    assert pids, "no live training worker found"
    # Ray starts worker processes at niceness 15; the training workers run at 0, as a driver does
    assert os.getpriority(os.PRIO_PROCESS, pids[0]) == 0
    os.kill(pids[0], signal.SIGKILL)  # at once: a Ray task started first could outlast epoch 2
    assert ray_cluster.get(ray_cluster.remote(lambda: os.nice(0)).remote()) > 0  # other workers: Ray's default
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
    # TensorBoard holds every step once: epoch 2's file was rewritten by the retry
    assert [s for s, _ in tensorboard_scalars(summary["run"])["train/loss"]] == list(range(1, 33))


def test_unknown_val_images_is_explained(tiny_shapes, tmp_path):
    with pytest.raises(ValueError, match="--val-images"):
        run_training(small_run(tiny_shapes, tmp_path, "x", val_annotations=tiny_shapes["val_annotations"]))


@pytest.mark.own_ray
def test_as_many_workers_as_cores_stops_with_a_message(tiny_shapes, tmp_path):
    """`jobs/train.py --workers N` on an N-core machine (its own local Ray): the workers would
    take every CPU and the decode/augment tasks would never run, so Ray would wait forever.
    The job stops at once, saying what is short and what to change; before that, it says which
    boxes it leaves out (here one of negative width), as --dry-run does."""
    cores = os.cpu_count()
    coco = json.loads(Path(tiny_shapes["train_annotations"]).read_text())
    coco["annotations"][0]["bbox"][2] = -5.0
    (tmp_path / "train.json").write_text(json.dumps(coco))
    proc = subprocess.run(
        [sys.executable, "jobs/train.py", "--annotations", str(tmp_path / "train.json"),
         "--images", tiny_shapes["train_images"], "--storage", str(tmp_path), "--name", "full",
         "--workers", str(cores), "--epochs", "1"],
        cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("train: the cluster cannot hold this run: it needs ")
    assert f"({cores} training workers of 1 CPU plus one decode/augment task of 0.5 CPU)" in last
    assert f"has {cores:g} CPU" in last and "fewer --workers" in last
    assert not list(tmp_path.glob("full/checkpoint_*"))
    assert (f"1 box(es) of {tmp_path / 'train.json'} have no area inside their image and are left out of training"
            in proc.stdout)


def test_a_paper_preset_without_pretrained_weights_is_refused(tiny_shapes, tmp_path):
    check_initialisation(TrainConfig("", "", "", ""))  # detr-tiny trains from scratch by design
    check_initialisation(TrainConfig("", "", "", "", preset="detr-r50", from_scratch=True))
    check_initialisation(TrainConfig("", "", "", "", preset="detr-r50", init=str(REPO / "checkpoints/detr-tiny-shapes.pt")))
    with pytest.raises(FileNotFoundError, match="no checkpoint at ck.pt"):  # a typo stops before Ray starts
        check_initialisation(TrainConfig("", "", "", "", preset="detr-r50", init="ck.pt"))
    with pytest.raises(ValueError, match="no such file"):
        check_initialisation(TrainConfig("", "", "", "", preset="detr-r50", backbone_weights=str(tmp_path / "x.pt")))
    proc = subprocess.run(
        [sys.executable, "jobs/train.py", "--annotations", tiny_shapes["train_annotations"], "--images",
         tiny_shapes["train_images"], "--storage", str(tmp_path), "--name", "r50", "--preset", "detr-r50"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        "train: detr-r50 starts from an ImageNet backbone: give --backbone-weights FILE (a torchvision ResNet "
        "state_dict, see docs/training.md) or --init CHECKPOINT, or --from-scratch to train it from random "
        "weights deliberately"]
