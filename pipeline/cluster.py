"""Joining or starting Ray, and what each job needs from it."""
from __future__ import annotations

import os

import ray

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
