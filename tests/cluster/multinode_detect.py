"""Bulk detection on a 3-node Ray cluster on one host (ray.cluster_utils.Cluster), twice in
the same cluster: over IMAGES into OUTPUT/all-nodes with every node up, then into
OUTPUT/node-removed while a worker node is removed mid-run. Run by tests/cluster/test_multinode.py in
its own process (a driver can join only one cluster); prints one JSON line:
{"all-nodes": summary, "node-removed": summary}.

    python tests/cluster/multinode_detect.py IMAGES OUTPUT CHECKPOINT
"""
from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import ray  # noqa: E402
from ray.util.state import list_actors  # noqa: E402

from pipeline import predictions  # noqa: E402
from pipeline.detection import DetectConfig, run_detection  # noqa: E402
from tests.local_cluster import start_cluster  # noqa: E402


def detect(cluster, workers: list, images: str, output: str, checkpoint: str, remove: bool) -> dict:
    actor_nodes: set[str] = set()
    removed: list[str] = []
    stop = threading.Event()

    def record_actor_nodes(alive_only: bool) -> None:
        filters = [("class_name", "=", "MapWorker(MapBatches(DetectorActor))")]
        try:
            actors = list_actors(filters=filters + ([("state", "=", "ALIVE")] if alive_only else []),
                                 address=cluster.address)
            actor_nodes.update(a.node_id for a in actors if a.node_id)  # not a pending or restarting one
        except Exception:
            pass

    def watch() -> None:
        while not stop.is_set():
            record_actor_nodes(alive_only=True)
            if remove and not removed and len(predictions.part_files(output)) >= 1:
                removed.append(workers[1].node_id)
                cluster.remove_node(workers[1], allow_graceful=False)
            time.sleep(0.2)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    # 0.6 CPU per actor: when a node goes, Ray restarts its actor on the other one, and the
    # two must still leave room there for a read (0.5) and a write task (0.25)
    summary = run_detection(DetectConfig(images=images, output=output, checkpoint=checkpoint, min_size=96,
                                         max_size=160, score_threshold=0.0, batch_size=2, window=4,
                                         shard_size=8, rows_per_file=4, actors=(2, 2), cpus_per_actor=0.6))
    stop.set()
    thread.join()
    record_actor_nodes(alive_only=False)  # finished actors too: a short run can end between polls
    summary["actor_nodes"] = sorted(actor_nodes)
    summary["worker_nodes"] = [w.node_id for w in workers]
    summary["removed"] = removed
    return summary


def main() -> None:
    images, output, checkpoint = sys.argv[1:4]
    cluster, workers = start_cluster(workers=2, cpus=2)
    try:
        runs = {name: detect(cluster, workers, images, f"{output}/{name}", checkpoint, remove=name == "node-removed")
                for name in ("all-nodes", "node-removed")}
    finally:
        ray.shutdown()
        cluster.shutdown()  # also deletes the address file Cluster wrote for ray.init()
    print(json.dumps(runs))


if __name__ == "__main__":
    main()
