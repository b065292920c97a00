"""`ray job submit` as the README writes it, against a Ray head started the README's way
(`make head`: the project's environment, token authentication) on 127.0.0.1."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from model.checkpoint import load_checkpoint
from tests import REPO
from tests.local_cluster import STATE_API, free_port
from tests.readme import checkout_layout, readme_commands, shortened

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


def start_head(folder: Path, token: Path) -> dict:
    """`make head` with a token of its own and free ports (the suite's own Ray holds the default
    ones), recorded under `folder`; returns its record (pipeline/cluster/head.py)."""
    port, dashboard = free_port(), free_port()
    head_args = "--node-ip-address=127.0.0.1 --num-cpus=4"  # and the temp folder of its own make head gives it
    proc = _run(["make", "head", f"RAY_AUTH_TOKEN_PATH={token}", f"HEAD_PORT={port}", f"DASHBOARD_PORT={dashboard}",
                 f"HEAD_ARGS={head_args}"], dict(_plain_env(), DETR_RAY_HEADS=str(folder)), timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "`make stop-head HEAD_PORT=" in proc.stdout
    return json.loads((folder / f"{port}.json").read_text())


def stop_head(folder: Path, head: dict) -> subprocess.CompletedProcess:
    proc = _run(["make", "stop-head", f"HEAD_PORT={head['port']}"], dict(_plain_env(), DETR_RAY_HEADS=str(folder)),
                timeout=120)
    subprocess.run(["rm", "-rf", head["temp_dir"]])
    return proc


@pytest.fixture(scope="module")
def token_head(tmp_path_factory):
    """A head as `make head` starts it, stopped by `make stop-head`. Yields (job API address,
    token file, its record, the records' folder)."""
    folder = tmp_path_factory.mktemp("head")
    token = folder / "auth_token"
    token.write_text(os.urandom(32).hex())
    head = start_head(folder / "records", token)
    try:
        yield head["dashboard"], token, head, folder / "records"
    finally:
        stopped = stop_head(folder / "records", head)
        assert stopped.returncode == 0, stopped.stderr


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


def _readme_folder(folder: Path) -> list[str]:
    """The README's first three commands (make the shapes, train, detect), and the shapes made
    in `folder` by the first, as the README's commands are run (tests/readme.py)."""
    checkout_layout(folder)
    make, train, detect = readme_commands()[:3]
    made = _run(shortened(make), _plain_env(), cwd=folder)
    assert made.returncode == 0, made.stderr
    return [train, detect]


def test_train_job_submitted_as_the_readme_says(token_head, tmp_path):
    """The README's training command, submitted: its relative paths mean the folder the job was
    submitted from: the run, its best checkpoint and progress files land there, not in Ray's
    copy of the working dir."""
    address, token, _, _ = token_head
    train, _ = _readme_folder(tmp_path)
    entrypoint = " ".join(["python", *shortened(train)[1:], "--log-every", "1"])
    proc = _submit(address, entrypoint, dict(_anonymous(), RAY_AUTH_TOKEN_PATH=str(token)), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    steps = [m.groups() for m in (re.search(r"epoch 1/1 step (\d+)/(\d+) loss .* eta ", line) for line in lines) if m]
    assert steps and steps == [(str(k), steps[0][1]) for k in range(1, int(steps[0][1]) + 1)]  # each step's line once
    assert any(line.startswith("training detr-tiny: 1 worker(s) x batch ") and "; lr 0.0003," in line
               for line in lines)  # the learning rate used, and its rule
    assert lines[-2].startswith("trained 1 epoch:")  # the human summary, then the JSON
    summary = json.loads(lines[-1])
    run = tmp_path / "work" / "runs" / "shapes"
    assert summary["metrics"]["epoch"] == 1 and summary["run"] == str(run)
    assert summary["best_checkpoint"] == str(run / "best" / "checkpoint.pt")
    assert Path(summary["best_checkpoint"]).is_file()
    assert sorted(p.name for p in (run / "progress").iterdir()) == ["epoch_0001.jsonl"]
    _, config = load_checkpoint(summary["checkpoint"])
    assert config.num_classes == 12


def test_plain_ray_job_submit_needs_the_token_and_runs_the_projects_python(token_head):
    address, token, _, _ = token_head
    command = [RAY, "job", "submit", "--address", address, "--working-dir", ".", "--",
               "python", "-c", "import ray, sys; print('python', sys.executable)"]
    refused = _run(command, _anonymous(), timeout=120)
    assert refused.returncode != 0 and "AuthenticationError" in refused.stdout + refused.stderr
    ran = _run(command, dict(_anonymous(), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token)), timeout=300)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-2000:]
    assert f"python {VENV_BIN / 'python'}" in ran.stdout  # the venv on the head's PATH, not this shell's


def test_a_wrong_token_or_a_head_that_is_down_is_one_line(token_head):
    address, _, _, _ = token_head
    wrong = _submit(address, "python -c print(1)", dict(_anonymous(), RAY_AUTH_TOKEN="0" * 64))
    missing = _submit(address, "python -c print(1)", _anonymous())
    down = _submit(f"http://127.0.0.1:{free_port()}", "python -c print(1)", _anonymous())
    for proc, says in ((wrong, "refused the token from RAY_AUTH_TOKEN: it is not this cluster's token"),
                       (missing, "needs the cluster's token and none was given"), (down, "no Ray head answers at")):
        assert proc.returncode == 1 and proc.stdout == ""
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("submit: ") and says in proc.stderr, proc.stderr


def test_a_failed_job_ends_in_one_line(token_head):
    address, token, _, _ = token_head
    proc = _submit(address, "python -c raise(SystemExit('the-reason'))", dict(_anonymous(), RAY_AUTH_TOKEN_PATH=str(token)))
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("job ") and ": FAILED: " in last, proc.stderr


def test_two_heads_each_stopped_on_its_own_and_a_head_lost_mid_job(token_head, tmp_path):
    """A second head on other ports runs beside the first; a job submitted to it, waiting, ends
    in one line when `make stop-head` stops that head, and the first head's processes live on."""
    import psutil

    address, token, first, records = token_head
    for port, says in ((first["port"], f"head: the head `make head` started at port {first['port']} is up"),
                       (first["dashboard_port"], f"head: port {first['dashboard_port']} (--port) is taken")):
        taken = _run(["make", "head", f"RAY_AUTH_TOKEN_PATH={token}", f"HEAD_PORT={port}",
                      f"DASHBOARD_PORT={free_port()}"], dict(_plain_env(), DETR_RAY_HEADS=str(records)), timeout=120)
        assert taken.returncode != 0 and says in taken.stderr, taken.stderr  # not shared
    second = start_head(records, token)
    for head in (first, second):
        # Ray's record of the current cluster, which a submitted job's driver joins, is each head's
        # own: no other Ray on the machine (this suite starts and stops many) rewrites or deletes it
        assert head["temp_dir"] == os.path.join(tempfile.gettempdir(), f"ray-head-{head['port']}")
        assert (Path(head["temp_dir"]) / "ray_current_cluster").read_text().strip().endswith(f":{head['port']}")
    env = dict(_anonymous(), RAY_AUTH_TOKEN_PATH=str(token))
    waiting = subprocess.Popen([sys.executable, str(REPO / "jobs" / "submit.py"), "--address", second["dashboard"],
                                "--working-dir", str(tmp_path), "--", "python", "-c", "import time; time.sleep(300)"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.time() + 120
    while not _job_running(second["dashboard"], token) and time.time() < deadline:
        assert waiting.poll() is None, waiting.communicate()
        time.sleep(1)
    stopped = stop_head(records, second)
    assert stopped.returncode == 0 and "other Rays untouched" in stopped.stdout, stopped.stderr
    out, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 1 and err.strip().splitlines()[-1].startswith(
        f"submit: lost the head at {second['dashboard']} while job "), err
    assert not [p for p in second["pids"] if psutil.pid_exists(p)]  # the second head is gone
    assert all(psutil.pid_exists(p) for p in first["pids"])  # the first one is not
    again = _submit(address, "python -c print(1)", env)
    assert again.returncode == 0, again.stderr


def _job_running(address: str, token: Path) -> bool:
    proc = _run([sys.executable, "-c", "from pipeline.cluster.submit import client; import sys; "
                 f"print(any(str(j.status).endswith('RUNNING') for j in client({address!r}).list_jobs()))"],
                dict(_anonymous(), RAY_AUTH_TOKEN_PATH=str(token)), timeout=60)
    return proc.stdout.strip().endswith("True")


def test_a_job_run_directly_beside_a_head_uses_a_ray_of_its_own_or_the_head(token_head, tmp_path):
    """With a head up, the README's training command run directly starts a local Ray of its own
    (no token needed, and Ray Train is not confused by the other Ray on the machine); its
    detection command with --ray head joins the head `make head` recorded, with the token, or
    says in one line what it lacks."""
    _, token, _, records = token_head
    env = dict(_anonymous(), DETR_RAY_HEADS=str(records))
    train, detect = _readme_folder(tmp_path)
    alone = _run(shortened(train), env, cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert "ray: a local Ray of this job's own" in alone.stderr
    assert "Found multiple active Ray instances" not in alone.stderr and "Traceback" not in alone.stderr
    joined_detect = [*shortened(detect), "--ray", "head"]
    joined = _run(joined_detect, dict(env, RAY_AUTH_TOKEN_PATH=str(token)), cwd=tmp_path)
    assert joined.returncode == 0, joined.stderr[-3000:]
    assert "ray: joined the head `make head` started at 127.0.0.1:" in joined.stderr
    assert json.loads(joined.stdout.strip().splitlines()[-1])["rows"] == 8
    untokened = _run(joined_detect, env, cwd=tmp_path)
    assert untokened.returncode == 1 and untokened.stderr.strip().splitlines()[-1] == (
        "detect: --ray: joining the head `make head` started needs the cluster's token and none was given: run "
        "`make token` where the head was started, or set RAY_AUTH_TOKEN_PATH to its file")
    # a token file that is not there: said as such, not as a refusal, and a local Ray runs anyway
    gone = dict(env, RAY_AUTH_TOKEN_PATH=str(tmp_path / "no-such-token"))
    named = _run(joined_detect, gone, cwd=tmp_path)
    assert named.returncode == 1 and "RAY_AUTH_TOKEN_PATH names " in named.stderr.strip().splitlines()[-1]


def test_an_upload_over_the_heads_limit_is_refused_before_sending(tmp_path):
    """What .gitignore leaves out (the README's outputs) is not counted; a large file it does not
    cover is named, with the fix, before anything is sent."""
    from pipeline.cluster.submit import MAX_UPLOAD, SubmitError, check_upload

    (tmp_path / ".gitignore").write_text((REPO / ".gitignore").read_text())
    for name in ("work/data/shapes/big.bin", "work/runs/r/checkpoint.pt", "notes/big.bin"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        with open(tmp_path / name, "wb") as f:
            f.truncate(MAX_UPLOAD + 1)  # sparse: its size without the disk
    with pytest.raises(SubmitError, match=r"largest notes \(100 MiB\).*\.gitignore or \.rayignore"):
        check_upload(str(tmp_path))
    (tmp_path / "notes" / "big.bin").unlink()
    check_upload(str(tmp_path))  # the data and the run: ignored, as the README's outputs are
