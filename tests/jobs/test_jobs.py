"""The entry points run as a user runs them and end with one JSON summary line."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from model.checkpoint import load_checkpoint
from tests import REPO
from tests.local_cluster import job_env


def run_job(*args: str, timeout: int = 900) -> dict:
    proc = subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=job_env()
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.own_ray
def test_demo(tmp_path):
    """The demo trains (the path), then detects with the shipped detr-tiny and its mask head: a
    detector that works, its masks scored."""
    summary = run_job("jobs/demo.py", "--out", str(tmp_path), "--train", "16", "--val", "16", "--epochs", "1",
                      "--pictures", "2")
    assert summary["metrics"]["epoch"] == 1 and summary["metrics"]["AP50"] is not None
    assert summary["detected_with"].endswith("checkpoints/detr-tiny-shapes-masks.pt")
    assert summary["detection"]["rows"] == 16 and summary["detection"]["errors"] == {}
    assert summary["evaluation"]["AP50"] >= 0.5 and summary["mask_evaluation"]["AP50"] >= 0.2
    assert len(summary["pictures"]) == 2 and all(Path(p).stat().st_size > 0 for p in summary["pictures"])
    assert (tmp_path / "pictures.png").stat().st_size > 0
    _, config = load_checkpoint(summary["checkpoint"])
    assert config.num_classes == 12


def test_make_synthetic(tmp_path):
    summary = run_job("jobs/make_synthetic.py", "--out", str(tmp_path), "--train", "3", "--val", "2", "--seed", "1")
    assert summary["train_count"] == 3 and len(list((tmp_path / "val").glob("*.jpg"))) == 2
