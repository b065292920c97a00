"""What a person watching a run gets, in parts: TensorBoard's files read back by TensorBoard,
stale epochs removed on resume, and the MLflow settings (the whole run: test_run.py)."""
from __future__ import annotations

import sys

import pytest

from pipeline.training.config import TrainConfig
from pipeline.training.events import EpochEvents, prune
from pipeline.training.run import check_initialisation
from pipeline.training.tracking import tracking_uri
from tests.pipeline.training import tensorboard_scalars


def test_event_files_read_back_in_tensorboard_and_later_epochs_are_pruned(tmp_path):
    folder = str(tmp_path / "tensorboard")
    for epoch in (1, 2, 3):
        events = EpochEvents(folder, epoch)
        for step in range(epoch * 10 - 9, epoch * 10 + 1):
            events.add(step, 1000.0 + step, {"train/loss": 1.0 / step, "train/lr": 1e-4})
        events.write(at_least_every=60.0)  # too soon after the start: nothing written yet
        assert not (tmp_path / "tensorboard").exists() or len(list((tmp_path / "tensorboard").iterdir())) == epoch - 1
        events.write()
    scalars = tensorboard_scalars(str(tmp_path))
    assert [s for s, _ in scalars["train/loss"]] == list(range(1, 31))
    assert scalars["train/loss"][4] == (5, pytest.approx(0.2))
    # a resume from epoch 1's checkpoint: epochs 2 and 3 are trained again, their files go
    removed = prune(folder, 1)
    assert sorted(p.rsplit("_", 1)[-1] for p in removed) == ["000002", "000003"]
    assert [s for s, _ in tensorboard_scalars(str(tmp_path))["train/loss"]] == list(range(1, 11))


def test_a_folder_given_to_mlflow_is_a_local_store_and_uris_are_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert tracking_uri("mlruns") == f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    for uri in ("http://127.0.0.1:5000", "databricks", "sqlite:////data/mlflow.db"):
        assert tracking_uri(uri) == uri


def test_mlflow_not_installed_is_said_before_anything_starts(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)  # as if the extra were not installed
    cfg = TrainConfig("a.json", "images", str(tmp_path), "run", mlflow=str(tmp_path / "mlruns"))
    with pytest.raises(ValueError, match=r"--mlflow needs MLflow's client.*pip install 'detr-ray\[mlflow\]'"):
        check_initialisation(cfg.resolved())
