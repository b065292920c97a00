"""Whether the cluster can hold what a run needs, asking an autoscaler and waiting where one can add it."""
from __future__ import annotations

import time
from collections.abc import Callable

import ray
from ray.autoscaler.sdk import request_resources


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
