"""A multi-node Ray cluster on this host (ray.cluster_utils.Cluster) for the multi-node scripts.

Its ports are chosen free: another Ray on the host (the test session's own) already holds
the defaults (dashboard 8265), and a head without a dashboard has no state API.
"""
from __future__ import annotations

import socket

import ray
from ray.cluster_utils import Cluster


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cluster(workers: int, cpus: int) -> tuple[Cluster, list]:
    """A head with no CPUs (so work goes to the workers) and `workers` nodes of `cpus` CPUs;
    connects this driver to it."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "dashboard_port": free_port()})
    nodes = [cluster.add_node(num_cpus=cpus) for _ in range(workers)]
    ray.init(address=cluster.address)
    cluster.wait_for_nodes()
    return cluster, nodes
