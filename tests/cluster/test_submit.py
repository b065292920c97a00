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

from tests import REPO
from tests.local_cluster import STATE_API, dashboard_env, free_port

pytestmark = pytest.mark.own_ray
VENV_BIN = Path(sys.executable).parent
RAY = str(VENV_BIN / "ray")


def _plain_env() -> dict:
    """This process's environment without the project's venv on PATH (so `python` there is
    not the project's) and without any Ray address or authentication setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS", STATE_API))}
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
                            cwd=REPO, env=dict(_plain_env(), **dashboard_env(dashboard)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
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
        time.sleep(2)  # `ray start --block` stops its processes; any left are found by their temp dir
        subprocess.run(["pkill", "-9", "-f", temp_dir])
        subprocess.run(["rm", "-rf", temp_dir])


def _run(args: list[str], env: dict, timeout: int = 900, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)


def _submit(address: str, entrypoint: str, env: dict, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """The README's command: jobs/submit.py (`ray job submit --working-dir .` with the token),
    from cwd, the checkout uploaded as the working dir."""
    return _run([sys.executable, str(REPO / "jobs" / "submit.py"), "--address", address, "--working-dir", str(REPO),
                 "--", *entrypoint.split()], env, cwd=cwd)


def _anonymous() -> dict:
    """No token anywhere: not in the environment, not in a home folder."""
    return dict(_plain_env(), HOME=tempfile.mkdtemp(prefix="home"))


def test_train_job_submitted_as_the_readme_says(token_head, tiny_shapes, tmp_path):
    """Relative paths, as the README writes them, mean the folder the job was submitted from: the
    run, its best checkpoint and progress files land there, not in Ray's copy of the working dir."""
    address, token = token_head

    def relative(key: str) -> str:
        return os.path.relpath(tiny_shapes[key], tmp_path)

    entrypoint = (
        f"python jobs/train.py --annotations {relative('train_annotations')} --images {relative('train_images')}"
        f" --val-annotations {relative('val_annotations')} --val-images {relative('val_images')}"
        " --storage runs --name submitted --epochs 1 --batch-size 4 --augment-scale 0.15 --log-every 2"
    )
    proc = _submit(address, entrypoint, dict(_anonymous(), RAY_AUTH_TOKEN_PATH=str(token)), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    steps = [line for line in lines if "epoch 1/1 step 4/4 loss " in line and " eta " in line]
    assert len(steps) == 1  # a progress line, printed once
    assert any(line.startswith("training detr-tiny: 1 worker(s) x batch 4 = total batch 4; lr 0.0003,")
               for line in lines)  # the learning rate used, and its rule
    assert lines[-2].startswith("trained 1 epoch:")  # the human summary, then the JSON
    summary = json.loads(lines[-1])
    run = tmp_path / "runs" / "submitted"
    assert summary["metrics"]["epoch"] == 1 and summary["run"] == str(run)
    assert summary["best_checkpoint"] == str(run / "best" / "checkpoint.pt")
    assert Path(summary["best_checkpoint"]).is_file()
    assert sorted(p.name for p in (run / "progress").iterdir()) == ["epoch_0001.jsonl"]
    _, config = load_checkpoint(summary["checkpoint"])
    assert config.num_classes == 12


def test_plain_ray_job_submit_needs_the_token_and_runs_the_projects_python(token_head):
    address, token = token_head
    command = [RAY, "job", "submit", "--address", address, "--working-dir", ".", "--",
               "python", "-c", "import ray, sys; print('python', sys.executable)"]
    refused = _run(command, _anonymous(), timeout=120)
    assert refused.returncode != 0 and "AuthenticationError" in refused.stdout + refused.stderr
    ran = _run(command, dict(_anonymous(), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token)), timeout=300)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-2000:]
    assert f"python {VENV_BIN / 'python'}" in ran.stdout  # the venv on the head's PATH, not this shell's


def test_a_wrong_token_or_a_head_that_is_down_is_one_line(token_head):
    address, _ = token_head
    wrong = _submit(address, "python -c print(1)", dict(_anonymous(), RAY_AUTH_TOKEN="0" * 64))
    missing = _submit(address, "python -c print(1)", _anonymous())
    down = _submit(f"http://127.0.0.1:{free_port()}", "python -c print(1)", _anonymous())
    for proc, says in ((wrong, "refused the token from RAY_AUTH_TOKEN: it is not this cluster's token"),
                       (missing, "requires a token and none was given"), (down, "no Ray head answers at")):
        assert proc.returncode == 1 and proc.stdout == ""
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("submit: ") and says in proc.stderr, proc.stderr
