"""Training with 2 workers, one per node (STRICT_SPREAD), on a Ray cluster of worker nodes on
one host (ray.cluster_utils.Cluster), checkpoints in STORAGE (s3:// on the local S3 server).
One run of EPOCHS epochs on 3 worker nodes: its 2 workers start on 2 of them, and once epoch
1's checkpoint is registered a node running a training worker is removed without warning: the
run must go on on the remaining capacity (the spare node). Run
by tests/cluster/test_multinode.py in its own process; prints one JSON line (the summary, with
the nodes the workers started on and what was removed when).

    python tests/cluster/multinode_train.py ANNOTATIONS IMAGES STORAGE EPOCHS
"""
from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pyarrow.fs as pafs  # noqa: E402
import ray  # noqa: E402
from ray.util.state import list_actors  # noqa: E402

from pipeline.training import TrainConfig, run_training  # noqa: E402
from tests.local_cluster import start_cluster  # noqa: E402


def registered_epochs(storage: str, name: str) -> list[int]:
    """Epochs of the checkpoints Ray Train has registered in the run folder."""
    fs, root = pafs.FileSystem.from_uri(storage)
    try:
        with fs.open_input_stream(f"{root}/{name}/checkpoint_manager_snapshot.json") as f:
            results = json.loads(f.read())["checkpoint_results"]
    except (OSError, ValueError, KeyError):
        return []
    return sorted(r["metrics"]["epoch"] for r in results)


def train(cluster, workers: list, annotations: str, images: str, storage: str, name: str, epochs: int) -> dict:
    """The run; a node of a training worker goes after epoch 1's checkpoint."""
    train_nodes: set[str] = set()
    events: dict = {}
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                actors = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
                                     address=cluster.address)
                train_nodes.update(a.node_id for a in actors)
            except Exception:
                actors = []
            if "started_on" not in events and len(actors) == 2:
                events["started_on"] = sorted(a.node_id for a in actors)
            if "started_on" in events and "removed" not in events and registered_epochs(storage, name):
                events["registered_at_removal"] = registered_epochs(storage, name)
                victim = next(w for w in workers if w.node_id in events["started_on"])
                events["removed"] = victim.node_id
                cluster.remove_node(victim, allow_graceful=False)
            time.sleep(0.2)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    summary = run_training(TrainConfig(
        annotations=annotations, images=images, storage=storage, name=name,
        model_overrides={"num_queries": 10}, epochs=epochs, batch_size=2, workers=2,
        placement="STRICT_SPREAD", cpus_per_worker=1.0, data_cpus=0.5, augment_scale=0.15, max_failures=2,
    ))
    stop.set()
    thread.join()
    summary.update(events, train_nodes=sorted(train_nodes), worker_nodes=[w.node_id for w in workers],
                   registered=registered_epochs(storage, name))
    return summary


def main() -> None:
    annotations, images, storage, epochs = sys.argv[1:5]
    cluster, workers = start_cluster(workers=3, cpus=2)  # 2 for the workers, 1 spare
    try:
        summary = train(cluster, workers, annotations, images, storage, "multinode", int(epochs))
    finally:
        ray.shutdown()
        cluster.shutdown()  # also deletes the address file Cluster wrote for ray.init()
    print(json.dumps(summary, default=str))


if __name__ == "__main__":
    main()
