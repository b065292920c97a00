"""Submitting a job to a Ray head as `ray job submit --working-dir .` does, with the cluster's
token and a one-line message when the head is down or refuses the token. The job is told the
folder it was submitted from, which its relative paths mean (pipeline/options.py)."""
from __future__ import annotations

import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from ..options import SUBMITTED_FROM
from .token import missing_token, use_token

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
MAX_UPLOAD = 100 * 2**20  # a head refuses a larger working_dir (HTTP 413: "Maximum request body size")


class SubmitError(RuntimeError):
    """Why a submission did not happen, in one line."""


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
            raise SubmitError(missing_token(f"the head at {address}")) from None
        if "invalid" in str(e).lower():
            raise SubmitError(f"the head at {address} refused the token from {source}: it is not this "
                              "cluster's token") from None
        raise SubmitError(f"the head at {address} refused the token from {source}: {str(e).splitlines()[0]}") from None


def submit(address: str, entrypoint: list[str], working_dir: str = ".", wait: bool = True,
           agent_wait_s: float = 120.0) -> tuple[str, str, str]:
    """Submit entrypoint with working_dir uploaded (what .gitignore and .rayignore leave out is
    not); with wait, stream its logs to stdout until it ends. Returns (submission id, final or
    current status, the job's message)."""
    jobs = client(address)  # first: it sets the token mode before Ray is imported
    check_upload(working_dir)
    for name in ("ray._private.runtime_env.packaging", "ray._private.runtime_env.working_dir"):
        logging.getLogger(name).setLevel(logging.ERROR)  # "Ignoring upload ...", ".git is now ignored ..."
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
        return job_id, str(jobs.get_job_status(job_id)), ""
    return (job_id, *follow(jobs, address, job_id))


def follow(jobs: Any, address: str, job_id: str) -> tuple[str, str]:
    """Stream the job's logs until it ends; (its status, its message). Losing the head on the way
    is a SubmitError (the job may still be running there)."""
    shown, status = 0, "PENDING"
    while True:
        try:
            info = jobs.get_job_info(job_id)
            logs = jobs.get_job_logs(job_id)
        except Exception as e:  # noqa: BLE001 (the connection's error, of aiohttp or requests)
            raise SubmitError(f"lost the head at {address} while job {job_id} was {status} "
                              f"({type(e).__name__}); if the head comes back, `ray job status {job_id}` "
                              "says how it ended") from None
        status = str(info.status).rsplit(".", 1)[-1]
        sys.stdout.write(logs[shown:])
        sys.stdout.flush()
        shown = len(logs)
        if status in TERMINAL:
            lines = (info.message or "").strip().splitlines()
            return status, lines[-1] if lines else ""
        time.sleep(2)


def check_upload(working_dir: str) -> None:
    """Refuse, before sending, an upload the head would refuse (its limit: MAX_UPLOAD), naming the
    largest entries and the fix. Counted as Ray packs it: without what .gitignore and .rayignore
    leave out (Ray's own walk of the folder)."""
    from ray._private.runtime_env.packaging import _dir_travel  # what the upload will hold

    root = Path(working_dir).resolve()
    sizes: dict[str, int] = {}

    def count(path: Path) -> None:
        if path.is_file():
            top = path.relative_to(root).parts[0]
            sizes[top] = sizes.get(top, 0) + path.stat().st_size

    quiet = logging.getLogger(__name__ + ".upload")  # not Ray's line per ignore file found
    quiet.setLevel(logging.WARNING)
    _dir_travel(root, [], count, include_gitignore=True, logger=quiet)
    total = sum(sizes.values())
    if total > MAX_UPLOAD:
        largest = sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
        named = ", ".join(f"{name} ({size / 2**20:.0f} MiB)" for name, size in largest)
        raise SubmitError(f"the working directory {root} would upload {total / 2**20:.0f} MiB, over the head's "
                          f"{MAX_UPLOAD / 2**20:.0f} MiB: largest {named}; add them to .gitignore or .rayignore, "
                          "or keep data and outputs outside the checkout (s3://, or another folder)")
