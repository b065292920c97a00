"""Several Ray instances on one host: the test session's own, the multi-node clusters
(ray.cluster_utils.Cluster) and the jobs that start a Ray of their own.

Ray's state API (which Ray Train itself calls from its controller's helpers) finds its cluster
by looking for Ray processes on the host; with two instances it picks the one started last
or fails ("Found multiple active Ray instances"). So every Ray of the test run is started
with RAY_API_SERVER_ADDRESS naming its own dashboard, inherited by all of its processes, and
its dashboard port is chosen free; Ray's default one (8265) is left to the jobs that start a
local Ray the way a user's does.
"""
from __future__ import annotations

import os
import socket

import ray
from ray.cluster_utils import Cluster

STATE_API = "RAY_API_SERVER_ADDRESS"
DEFAULT_DASHBOARD = 8265

# A removed node is declared dead after 3 missed health checks 0.5 s apart, not Ray's default of
# 5 at 3 s: the tests remove nodes on purpose and wait for Ray to notice.
FAST_NODE_DEATH = {"health_check_period_ms": 500, "health_check_failure_threshold": 3}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dashboard_env(port: int) -> dict[str, str]:
    """The variable that points Ray's state API at the Ray whose dashboard is on `port`."""
    return {STATE_API: f"http://127.0.0.1:{port}"}


def own_dashboard() -> int:
    """A free port for the dashboard of the Ray this process starts next, named to the state
    API here and in every process started from here (that Ray's own among them)."""
    port = free_port()
    os.environ.update(dashboard_env(port))
    return port


def job_env() -> dict[str, str]:
    """The environment of a job that starts a Ray of its own: this process's, without the
    session Ray's address, and the state API at Ray's default dashboard, where a job's local
    Ray puts it (start_cluster points it at its own instead)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", STATE_API)}
    env.update(dashboard_env(DEFAULT_DASHBOARD))
    return env


def start_cluster(workers: int, cpus: int) -> tuple[Cluster, list]:
    """A head with no CPUs (so work goes to the workers) and `workers` nodes of `cpus` CPUs;
    connects this driver to it."""
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "dashboard_port": own_dashboard(), "_system_config": FAST_NODE_DEATH})
    nodes = [cluster.add_node(num_cpus=cpus) for _ in range(workers)]
    ray.init(address=cluster.address)
    cluster.wait_for_nodes()
    return cluster, nodes
