"""Which Ray a job uses, decided in one place and said in one line.

- A submitted job (`jobs/submit.py`, `ray job submit`) joins the cluster that runs it: the head
  sets RAY_ADDRESS for it.
- A job run directly starts a Ray of its own by default (`--ray local`), whatever else runs on
  the machine: it needs no token, and another Ray (a head started with `make head`, another
  project's, a test's) neither takes its work nor gets in its way. Ray's own default would attach
  to the machine's most recent head instead, and without its token retry for ~24 s and fail.
- `--ray head` joins the head `make head` started on this machine (pipeline/cluster/head.py
  records it), `--ray HOST:PORT` any cluster's GCS address; both with the token at hand
  (RAY_AUTH_TOKEN_PATH, RAY_AUTH_TOKEN, or the file `make token` wrote).
"""
from __future__ import annotations

import os
import sys

import ray

from .head import recorded_head
from .ports import STATE_API, answers, free_port
from .quiet import drop_routine_stderr, token_auth_notice
from .token import missing_token, use_token

# Passed to a local Ray's workers so s3:// works there as on the driver (never written to outputs).
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE", "RAY_AUTH_MODE")
# Ray's state API (which Ray Train calls) finds its cluster by the Ray processes on the host, and
# fails with two ("Found multiple active Ray instances") unless this names its dashboard.
RAY_HELP = ("the Ray to run on: local (default: one of this job's own, started and stopped with it), head (the "
            "head `make head` started on this machine), or HOST:PORT (a cluster's address); a submitted job "
            "runs on the cluster it was submitted to")

_choice: str | None = None


class RayChoiceError(ValueError):
    """The Ray asked for cannot be used, in one line."""


def use_ray(choice: str | None) -> None:
    """The job's --ray, for init_ray (a job's options are read before its pipeline starts Ray);
    from here on the job's stderr goes without Ray's routine lines (quiet.py)."""
    global _choice
    _choice = choice
    drop_routine_stderr()


def init_ray(choice: str | None = None) -> None:
    """Start or join Ray as `choice` (else the job's --ray, else the default above) says."""
    if ray.is_initialized():
        return
    choice = choice or _choice
    if choice is None and os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
        say(f"ray: the cluster at {os.environ['RAY_ADDRESS']} (RAY_ADDRESS)")
    elif choice in (None, "local"):
        start_local()
    elif choice == "head":
        head = recorded_head()
        if head is None:
            raise RayChoiceError("--ray head: no head started by `make head` is up on this machine (start one, or "
                                 "run with --ray local)")
        join(head["address"], "the head `make head` started", head["dashboard"])
    else:
        join(choice, choice, None)


def start_local() -> None:
    """A Ray of this job's own, its dashboard on a free port named to the state API (inherited by
    every process it starts), with the driver's AWS variables in its workers' environment."""
    port = free_port()
    os.environ[STATE_API] = f"http://127.0.0.1:{port}"
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    token_auth_notice(quiet=True)  # Ray's default for a local Ray, said at every start
    ray.init(address="local", dashboard_port=port, runtime_env={"env_vars": env} if env else None)
    token_auth_notice(quiet=False)
    cpus = ray.cluster_resources().get("CPU", 0)
    say(f"ray: a local Ray of this job's own ({cpus:g} CPUs; --ray head joins the head `make head` started)")


def join(address: str, what: str, dashboard: str | None) -> None:
    """Join the Ray at a GCS address with the token at hand: one line, not Ray's retry loop, when
    nothing answers there or (where its dashboard is known) the token is refused."""
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        raise RayChoiceError(f"--ray {address}: not an address; --ray takes local, head or HOST:PORT")
    source = use_token()
    if source is None:
        raise RayChoiceError(f"--ray: {missing_token(f'joining {what}')}")
    if not answers(host or "127.0.0.1", int(port)):
        raise RayChoiceError(f"--ray: nothing answers at {address}" + ("" if what == address else f" ({what})")
                             + "; is it up?")
    if dashboard:  # the token checked where a refusal is one quick answer, not 24 s of retries
        from .submit import SubmitError, client

        try:
            client(dashboard)
        except SubmitError as e:
            raise RayChoiceError(f"--ray: {e}") from None
    os.environ.pop(STATE_API, None)
    ray.init(address=address, log_to_driver=True)
    say(f"ray: joined {what} at {address} (token from {source})")


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
