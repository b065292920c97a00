"""Multi-node behaviour on one host: Ray's own multi-node facility (ray.cluster_utils.Cluster)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from model.checkpoint import load_checkpoint, save_checkpoint
from model.segmentation import build_detr
from tests import REPO
from tests.corpus import write_pictures
from tests.local_cluster import job_env
from tests.pipeline.training import tensorboard_scalars

pytestmark = pytest.mark.own_ray


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """A ResNet-18 detr-tiny: slow enough that a node can be removed while images remain."""
    torch.manual_seed(0)
    model = build_detr("detr-tiny", num_classes=12, backbone="resnet18", masked_backbone=False)
    return save_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "r18.pt"), model)


@pytest.fixture(scope="module")
def shapes32(tmp_path_factory) -> dict:
    """32 training images of 64-128 px: 8 steps of 2 images per worker and epoch."""
    from pipeline.synthetic import SyntheticConfig, make_synthetic

    return make_synthetic(str(tmp_path_factory.mktemp("shapes32")), train=32, val=0, seed=3,
                          config=SyntheticConfig(min_side=64, max_side=128, max_objects=3, min_object=12,
                                                 max_object=40))


@pytest.fixture(scope="module")
def runs(checkpoint, shapes32, s3_server, tmp_path_factory) -> dict:
    """One 3-node cluster (one start-up for every test here): a 2-epoch run of 2 workers that loses
    a worker's node in epoch 2, then two detection runs on the 2 nodes left, the second losing one."""
    import uuid

    import pyarrow.fs as pafs

    bucket = f"multinode-{uuid.uuid4().hex[:8]}"
    s3 = pafs.S3FileSystem(endpoint_override=s3_server, allow_bucket_creation=True, region="us-east-1")
    s3.create_dir(bucket)
    folder = tmp_path_factory.mktemp("multinode-detect")
    write_pictures(folder / "images", 24, seed=4)
    pafs.copy_files(str(folder / "images"), f"{bucket}/images", destination_filesystem=s3)
    # with the AWS_* variables of the S3 server
    proc = subprocess.run([sys.executable, "tests/cluster/multinode.py", shapes32["train_annotations"],
                           shapes32["train_images"], f"s3://{bucket}/runs", "2", f"s3://{bucket}/images",
                           str(folder / "out"), checkpoint], cwd=REPO, env=job_env(), capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    summary["training"]["bucket"] = f"s3://{bucket}"
    return summary


@pytest.mark.parametrize("remove_node", [False, True], ids=["all-nodes", "node-removed-mid-run"])
def test_detection_across_nodes(runs, remove_node):
    summary = runs["detection"]["node-removed" if remove_node else "all-nodes"]
    assert summary["rows"] == summary["inputs"] == 24 and summary["duplicates"] == summary["missing_rows"] == 0
    assert summary["errors"] == {}
    if remove_node:
        assert summary["removed"] == [summary["worker_nodes"][1]]
        assert summary["held_reads"] > 0  # the last image waited for the removal
    else:
        assert set(summary["worker_nodes"]) <= set(summary["actor_nodes"])  # an actor on each worker node


@pytest.fixture(scope="module")
def training_run(runs) -> dict:
    return runs["training"]


def test_training_on_two_nodes_checkpoints_to_object_storage(training_run):
    started_on = training_run["started_on"]
    assert len(set(started_on)) == 2 and set(started_on) <= set(training_run["worker_nodes"])  # a worker per node
    assert training_run["checkpoint"].startswith(f"{training_run['bucket']}/runs/multinode/")
    _, config = load_checkpoint(training_run["checkpoint"])
    assert config.num_queries == 10


def test_training_survives_losing_a_node(training_run):
    summary = training_run
    assert summary["registered_at_removal"] == [1]  # the node went mid-way, before epoch 2's checkpoint
    assert summary["removed"] in summary["started_on"]
    assert summary["train_nodes"] == sorted(summary["worker_nodes"])  # the restart used the spare node
    assert summary["metrics"]["epoch"] == 2
    assert summary["metrics"]["steps"] == 2 * 8  # 8 steps of 2 images per worker and epoch, none counted twice
    assert summary["registered"] == [1, 2]
    # TensorBoard's files on the object store: every step once, though epoch 2 ran twice
    assert ([s for s, _ in tensorboard_scalars(f"{training_run['bucket']}/runs/multinode")["train/loss"]]
            == list(range(1, 17)))
