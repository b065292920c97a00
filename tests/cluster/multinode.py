"""Training and bulk detection on one 3-node Ray cluster on one host (ray.cluster_utils.Cluster:
a head without CPUs and 3 worker nodes of 2 CPUs), one start-up for both. Run by
tests/cluster/test_multinode.py in its own process (a driver can join only one cluster); prints
one JSON line: {"training": summary, "detection": {"all-nodes": summary, "node-removed": summary}}.

1. Training with 2 workers, one per node (STRICT_SPREAD), checkpoints in STORAGE (s3:// on the
   local S3 server), EPOCHS epochs: its 2 workers start on 2 of the 3 nodes, and once epoch 1's
   checkpoint is registered a node running a training worker is removed without warning: the
   run must go on on the remaining capacity (the spare node).
2. Detection on the 2 nodes left, twice: over IMAGES (s3://, read through a FlakyProxy of this
   process) into OUTPUT/all-nodes with both up, then into OUTPUT/node-removed while one of them is
   removed mid-run: the last image is held (its reads fail and are retried) until the node is
   removed, once an actor runs there and that read has begun, so the run cannot end before. The
   node takes with it its actor and the blocks it holds: rows done but not yet written.

    python tests/cluster/multinode.py ANNOTATIONS IMAGES STORAGE EPOCHS DETECT_IMAGES OUTPUT CHECKPOINT
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pyarrow.fs as pafs  # noqa: E402
import ray  # noqa: E402
from ray.util.state import list_actors  # noqa: E402

from pipeline.detection.config import DetectConfig  # noqa: E402
from pipeline.detection.plan import list_image_files  # noqa: E402
from pipeline.detection.run import run_detection  # noqa: E402
from pipeline.training.config import TrainConfig  # noqa: E402
from pipeline.training.run import run_training  # noqa: E402
from tests.flaky_s3 import FlakyProxy  # noqa: E402
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


def detect(cluster, workers: list, images: str, output: str, checkpoint: str, proxy: FlakyProxy | None) -> dict:
    """With a proxy: the last image is held until the node has been removed (one image, so that
    one read task waits: more would take the CPU budget the other reads and the writes need)."""
    if proxy:
        proxy.take_down(list_image_files(images)[-1].removeprefix("s3://"))
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
            if proxy and not removed and proxy.failed and workers[1].node_id in actor_nodes:
                removed.append(workers[1].node_id)
                cluster.remove_node(workers[1], allow_graceful=False)
                proxy.heal()
            time.sleep(0.2)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    # 0.6 CPU per actor: when a node goes, Ray restarts its actor on the other one, and the
    # two must still leave room there for a read (0.5) and a write task (0.25); 30 attempts of a
    # held read: about a minute of backoff, for a removal that takes seconds
    summary = run_detection(DetectConfig(images=images, output=output, checkpoint=checkpoint, min_size=96,
                                         max_size=160, score_threshold=0.0, batch_size=2, window=4,
                                         shard_size=8, rows_per_file=4, actors=(2, 2), cpus_per_actor=0.6,
                                         read_attempts=30))
    stop.set()
    thread.join()
    record_actor_nodes(alive_only=False)  # finished actors too: a short run can end between polls
    summary["actor_nodes"] = sorted(actor_nodes)
    summary["worker_nodes"] = [w.node_id for w in workers]
    summary["removed"] = removed
    summary["held_reads"] = proxy.failed if proxy else 0
    return summary


def main() -> None:
    annotations, images, storage, epochs, detect_images, output, checkpoint = sys.argv[1:8]
    proxy = FlakyProxy(os.environ["AWS_ENDPOINT_URL"])  # before the nodes start: they read through it
    os.environ["AWS_ENDPOINT_URL"] = proxy.endpoint
    cluster, workers = start_cluster(workers=3, cpus=2)  # 2 for the training workers, 1 spare
    try:
        training = train(cluster, workers, annotations, images, storage, "multinode", int(epochs))
        left = [w for w in workers if w.node_id != training.get("removed")][:2]
        detection = {name: detect(cluster, left, detect_images, f"{output}/{name}", checkpoint,
                                  proxy if name == "node-removed" else None)
                     for name in ("all-nodes", "node-removed")}
    finally:
        ray.shutdown()
        cluster.shutdown()  # also deletes the address file Cluster wrote for ray.init()
        proxy.close()
    print(json.dumps({"training": training, "detection": detection}, default=str))


if __name__ == "__main__":
    main()
