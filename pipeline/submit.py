"""Submitting a job to a Ray head as `ray job submit --working-dir .` does, with the cluster's
token and a one-line message when the head is down or refuses the token. The job is told the
folder it was submitted from, which its relative paths mean (pipeline/paths.py)."""
from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

from .paths import SUBMITTED_FROM

DEFAULT_TOKEN = Path.home() / ".config" / "detr-ray" / "auth_token"  # what `make token` writes
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class SubmitError(RuntimeError):
    """Why a submission did not happen, in one line."""


def use_token() -> str | None:
    """Token mode for this process when a token is at hand (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, or
    the file `make token` wrote); returns where it comes from."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        source = "RAY_AUTH_TOKEN"
    elif os.environ.get("RAY_AUTH_TOKEN_PATH"):
        source = os.environ["RAY_AUTH_TOKEN_PATH"]
    elif DEFAULT_TOKEN.is_file():
        source = os.environ["RAY_AUTH_TOKEN_PATH"] = str(DEFAULT_TOKEN)
    else:
        return None
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    return source


def client(address: str):
    """A JobSubmissionClient for the head at address, or a SubmitError saying why there is none."""
    source = use_token()  # before Ray is imported: it reads RAY_AUTH_MODE once
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except ConnectionError:
        raise SubmitError(f"no Ray head answers at {address}: is it up? (`make head` on this machine; "
                          "`ray dashboard cluster.yaml` forwards the cluster's)") from None
    except AuthenticationError as e:
        if source is None:
            raise SubmitError(f"the head at {address} requires a token and none was given: run `make token` "
                              "where the head was started, or set RAY_AUTH_TOKEN_PATH") from None
        if "invalid" in str(e).lower():
            raise SubmitError(f"the head at {address} refused the token from {source}: it is not this "
                              "cluster's token") from None
        raise SubmitError(f"the head at {address} refused the token from {source}: {str(e).splitlines()[0]}") from None


def submit(address: str, entrypoint: list[str], working_dir: str = ".", wait: bool = True,
           agent_wait_s: float = 120.0) -> tuple[str, str]:
    """Submit entrypoint with working_dir uploaded; with wait, stream its logs to stdout until it
    ends. Returns (submission id, final or current status)."""
    jobs = client(address)
    deadline = time.time() + agent_wait_s
    while True:  # a fresh head answers before its job agent has registered
        try:
            job_id = jobs.submit_job(entrypoint=shlex.join(entrypoint), runtime_env={
                "working_dir": working_dir,
                "env_vars": {SUBMITTED_FROM: os.getcwd()},  # the folder the job's relative paths mean
            })
            break
        except RuntimeError as e:
            if "No available agent" not in str(e) or time.time() > deadline:
                raise SubmitError(f"the head at {address} did not take the job: {str(e).splitlines()[0]}") from None
            time.sleep(2)
    print(f"submitted {job_id} to {address}", file=sys.stderr, flush=True)
    if not wait:
        return job_id, str(jobs.get_job_status(job_id))
    shown = 0
    while True:
        status = str(jobs.get_job_status(job_id)).rsplit(".", 1)[-1]
        logs = jobs.get_job_logs(job_id)
        sys.stdout.write(logs[shown:])
        sys.stdout.flush()
        shown = len(logs)
        if status in TERMINAL:
            return job_id, status
        time.sleep(2)
