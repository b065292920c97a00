"""`ray job submit` end to end against a Ray head this test starts on 127.0.0.1 and stops."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from model import load_checkpoint

from .local_cluster import free_port

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


@pytest.fixture
def ray_head():
    """`ray start --head --block` on free ports (the test session's own Ray holds the default
    ones: a job agent that cannot bind its port never registers); SIGTERM stops this cluster only."""
    port, dashboard = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = dict(os.environ, RAY_AUTH_MODE="disabled", PATH=f"{VENV_BIN}:{os.environ['PATH']}")
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
         f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
         f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}", "--num-cpus=4",
         f"--temp-dir={temp_dir}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=2)
            break
        except Exception:
            assert head.poll() is None and time.time() < deadline, "Ray head did not start"
            time.sleep(1)
    try:
        yield address, env
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _ray(args: list[str], env: dict, timeout: int = 120) -> str:
    proc = subprocess.run([str(VENV_BIN / "ray"), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


def _submit(args: list[str], env: dict, timeout: float = 120) -> None:
    """The head answers HTTP before its job agent has registered; until then a submission gets
    "No available agent to submit job, please try again later" and nothing is created, so retry."""
    deadline = time.time() + timeout
    while True:
        proc = subprocess.run([str(VENV_BIN / "ray"), *args], env=env, capture_output=True, text=True,
                              timeout=120, cwd=REPO)
        if proc.returncode == 0:
            return
        busy = "No available agent" in proc.stdout + proc.stderr
        assert busy and time.time() < deadline, proc.stdout[-2000:] + proc.stderr[-2000:]
        time.sleep(2)


def test_train_job_submitted_to_a_cluster(ray_head, tiny_shapes, tmp_path):
    address, env = ray_head
    storage = tmp_path / "runs"
    entrypoint = (
        f"python jobs/train.py --annotations {tiny_shapes['train_annotations']} --images {tiny_shapes['train_images']}"
        f" --storage {storage} --name submitted --epochs 2 --batch-size 4 --augment-scale 0.15"
    )
    submit_id = f"train-{os.getpid()}"
    _submit(["job", "submit", "--address", address, "--working-dir", str(REPO), "--submission-id", submit_id,
             "--no-wait", "--", *entrypoint.split()], env)
    deadline = time.time() + 600
    status = ""
    while time.time() < deadline:
        status = _ray(["job", "status", "--address", address, submit_id], env).upper()
        if any(s in status for s in ("SUCCEEDED", "FAILED", "STOPPED")):
            break
        time.sleep(3)
    logs = _ray(["job", "logs", "--address", address, submit_id], env)
    assert "SUCCEEDED" in status, logs[-4000:]
    summary = json.loads(logs.strip().splitlines()[-1])
    assert summary["metrics"]["epoch"] == 2
    _, config = load_checkpoint(summary["checkpoint"])
    assert config.num_classes == 12
