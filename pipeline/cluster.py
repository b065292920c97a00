"""Joining or starting Ray, and what each job needs from it."""
from __future__ import annotations

import os
import time
from typing import Callable

import ray
from ray.autoscaler.sdk import request_resources

# Passed to Ray workers so s3:// works there as on the driver (never written to outputs).
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE", "RAY_AUTH_MODE")


def init_ray() -> None:
    """Join the cluster of `ray job submit` / RAY_ADDRESS, or start a local one.

    A local cluster gets the driver's AWS variables in its workers' environment; a
    submitted job gets them from the submission's runtime env.
    """
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
        return
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    ray.init(runtime_env={"env_vars": env} if env else None)


class ClusterTooSmall(RuntimeError):
    """The run's resources do not fit the cluster, even after waiting for an autoscaler."""


def wait_for(need: dict[str, float], wait_s: float, what: str, advice: str,
             log: Callable[[str], None] = print) -> dict[str, float]:
    """The cluster's resources once `need` (what the run holds at once: `what`) fits; asks the
    autoscaler (if any) and waits up to wait_s, then raises ClusterTooSmall saying what is short
    and what to change (`advice`). Ray itself would wait in silence."""
    def shortfall(have: dict[str, float]) -> dict[str, float]:
        return {k: v for k, v in need.items() if have.get(k, 0) < v}

    have = ray.cluster_resources()
    short = shortfall(have)
    if short and wait_s > 0:
        request_resources(bundles=[{k: v} for k, v in need.items()])
        deadline, last = time.time() + wait_s, 0.0
        while short and time.time() < deadline:
            if time.time() - last > 30:
                log(f"waiting up to {deadline - time.time():.0f} s for the autoscaler: need {need}, cluster has "
                    f"{ {k: have.get(k, 0) for k in need} }")
                last = time.time()
            time.sleep(2)
            have = ray.cluster_resources()
            short = shortfall(have)
    if short:
        raise ClusterTooSmall(
            "the cluster cannot hold this run: it needs " + ", ".join(f"{v:g} {k}" for k, v in need.items())
            + f" ({what}) and has " + ", ".join(f"{have.get(k, 0):g} {k}" for k in need) + f". {advice}")
    return have
