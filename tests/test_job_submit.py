"""`ray job submit` as the README writes it, against a Ray head started the README's way
(`make head`: the project's environment, token authentication) on 127.0.0.1."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from model import load_checkpoint

from .local_cluster import free_port

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
RAY = str(VENV_BIN / "ray")


def _plain_env() -> dict:
    """This process's environment without the project's venv on PATH (so `python` there is
    not the project's) and without any Ray address or authentication setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep)
                                  if p and Path(p).resolve() != VENV_BIN.resolve())
    return env


@pytest.fixture(scope="module")
def token_head(tmp_path_factory):
    """`make head` with a token of its own and free ports (the suite's own Ray holds the
    default ones); SIGTERM to its process group stops this cluster only. Yields (address, token file)."""
    folder = tmp_path_factory.mktemp("head")
    token = folder / "auth_token"
    dashboard = free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths have a length limit
    head_args = (f"--block --node-ip-address=127.0.0.1 --port={free_port()} --dashboard-port={dashboard}"
                 f" --dashboard-agent-listen-port={free_port()} --dashboard-agent-grpc-port={free_port()}"
                 f" --runtime-env-agent-port={free_port()} --metrics-export-port={free_port()} --num-cpus=4"
                 f" --temp-dir={temp_dir}")
    head = subprocess.Popen(["make", "head", f"RAY_AUTH_TOKEN_PATH={token}", f"HEAD_ARGS={head_args}"],
                            cwd=REPO, env=_plain_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=2)
            break
        except urllib.error.HTTPError:  # it answers: authentication refused the anonymous request
            break
        except Exception:
            assert head.poll() is None and time.time() < deadline, "Ray head did not start"
            time.sleep(1)
    try:
        yield address, token
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        subprocess.run(["rm", "-rf", temp_dir])


def _ray(args: list[str], env: dict, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([RAY, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def _with_token(token: Path) -> dict:
    return dict(_plain_env(), RAY_AUTH_TOKEN_PATH=str(token))


def _submit(args: list[str], env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    """The head answers HTTP before its job agent has registered; until then a submission gets
    "No available agent to submit job, please try again later" and nothing is created, so retry."""
    deadline = time.time() + timeout
    while True:
        proc = _ray(args, env)
        if "No available agent" not in proc.stdout + proc.stderr or time.time() > deadline:
            return proc
        time.sleep(2)


def test_train_job_submitted_as_the_readme_says(token_head, tiny_shapes, tmp_path):
    address, token = token_head
    storage = tmp_path / "runs"
    entrypoint = (
        f"python jobs/train.py --annotations {tiny_shapes['train_annotations']} --images {tiny_shapes['train_images']}"
        f" --storage {storage} --name submitted --epochs 2 --batch-size 4 --augment-scale 0.15"
    )
    submit_id = f"train-{os.getpid()}"
    env = _with_token(token)
    proc = _submit(["job", "submit", "--address", address, "--working-dir", ".", "--submission-id", submit_id,
                    "--no-wait", "--", *entrypoint.split()], env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    deadline = time.time() + 600
    status = ""
    while time.time() < deadline:
        status = _ray(["job", "status", "--address", address, submit_id], env).stdout.upper()
        if any(s in status for s in ("SUCCEEDED", "FAILED", "STOPPED")):
            break
        time.sleep(3)
    logs = _ray(["job", "logs", "--address", address, submit_id], env).stdout
    assert "SUCCEEDED" in status, logs[-4000:]
    lines = logs.strip().splitlines()
    assert lines[-2].startswith("trained 2 epochs")  # the human summary, then the JSON
    summary = json.loads(lines[-1])
    assert summary["metrics"]["epoch"] == 2
    _, config = load_checkpoint(summary["checkpoint"])
    assert config.num_classes == 12
