"""Shared fixtures: the reference data beside the repository."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import REPO

# Every Ray cluster of the test run, and every driver, without token auth (docs/training.md),
# except the authenticated head of test_job_submit.py.
os.environ["RAY_AUTH_MODE"] = "disabled"
# One thread per process for PyTorch's and NumPy's kernels, here and in every process started from
# here (jobs, Ray workers): the two test processes already keep both cores busy, and more
# threads only contend for them (the suite takes a tenth longer with two each).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Ray Train's controller polls its workers every 2 s and each run waits for a poll at each
# phase (start, every worker done): 3 s of a 9 s one-epoch test run. Runs and their outcome
# are the same at a shorter interval.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
# Start-up work no test depends on, left out for CPU: Ray's workers started ahead for the first
# driver (4 processes importing Ray), and Ray Train's watcher for node drains (one actor per run).
os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
REFERENCE = Path(os.environ.get("DETR_REFERENCE_DIR", REPO.parent / "shared" / "reference"))


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`make test` runs two pytest processes (`-n 2 --dist loadgroup`). The tests that start
    Rays of their own (`own_ray`) run one after the other in one of them; every other test goes
    to whichever process is free, and each process starts its own session Ray
    (`ray_cluster`) if a test there needs it. tests/local_cluster.py says how the Rays
    of one host keep apart."""
    for item in items:
        if item.get_closest_marker("own_ray"):
            item.add_marker(pytest.mark.xdist_group("own_ray"))
        if item.get_closest_marker("own_ray") or "ray_cluster" in item.fixturenames:
            item.add_marker(pytest.mark.ray)  # left out by `make test-fast`
    # the long tests first (those on the session's Ray), the short ones after to even out the end
    items.sort(key=lambda item: "ray_cluster" not in item.fixturenames)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The reference data (../shared/reference beside the checkout, or DETR_REFERENCE_DIR). A test
    that needs it fails without it, in CI and everywhere: a skipped oracle proves nothing."""
    if not REFERENCE.is_dir():
        pytest.fail(f"reference data missing at {REFERENCE}: set DETR_REFERENCE_DIR to the folder that holds "
                    "detr_small_fixture.pt and coco/")
    return REFERENCE


@pytest.fixture(scope="session")
def small_fixture(reference_dir: Path) -> dict:
    import torch

    return torch.load(reference_dir / "detr_small_fixture.pt", weights_only=True)


@pytest.fixture(scope="session")
def fixture_config(small_fixture):
    from model import DetrConfig

    c = small_fixture["config"]
    return DetrConfig(
        backbone=c["backbone"],
        dilation=c["dilation"],
        hidden_dim=c["hidden_dim"],
        nheads=c["nheads"],
        enc_layers=c["enc_layers"],
        dec_layers=c["dec_layers"],
        dim_feedforward=c["dim_feedforward"],
        dropout=c["dropout"],
        num_queries=c["num_queries"],
        num_classes=c["num_classes"],
        aux_loss=c["aux_loss"],
    )


@pytest.fixture(scope="session")
def fixture_model(small_fixture, fixture_config):
    from model import DETR

    model = DETR(fixture_config)
    model.load_state_dict(small_fixture["state_dict"], strict=True)
    return model.eval()


@pytest.fixture(scope="session")
def s3_server(s3_faults):
    """The endpoint URL of a real S3-compatible server on 127.0.0.1, as everything in the test
    run reaches it (through s3_faults, which passes requests on unless a test says otherwise).
    Tests create their own buckets with s3_bucket."""
    return s3_faults.endpoint


@pytest.fixture(scope="session")
def s3_faults():
    """A real S3-compatible server (moto) on 127.0.0.1 behind a proxy that can fail reads
    (tests/flaky_s3.py); AWS_* variables point at the proxy. Yields the proxy."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    from tests.flaky_s3 import FlakyProxy

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except Exception:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError("moto server did not start") from None
            time.sleep(0.2)
    proxy = FlakyProxy(endpoint)
    saved = {k: os.environ.get(k) for k in _S3_ENV}
    os.environ.update(
        AWS_ENDPOINT_URL=proxy.endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    try:
        yield proxy
    finally:
        proxy.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        proc.wait(timeout=10)


_S3_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


@pytest.fixture
def s3_bucket(s3_server, request) -> str:
    """A fresh bucket on the local S3 server; returns its s3:// URI."""
    import re
    import uuid

    import pyarrow.fs as pafs

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    bucket = f"{name}-{uuid.uuid4().hex[:8]}"
    fs = pafs.S3FileSystem(endpoint_override=s3_server, allow_bucket_creation=True, region="us-east-1")
    fs.create_dir(bucket)
    return f"s3://{bucket}"


@pytest.fixture(scope="session")
def ray_cluster(s3_server):
    """One local Ray for the test process, with more logical CPUs than cores so training
    workers and Ray Data tasks fit side by side. Started after the S3 server, so every
    Ray worker inherits the AWS_* variables that point at it."""
    import ray

    from tests.local_cluster import own_dashboard

    # a dashboard of its own, named to the state API (tests/local_cluster.py says why)
    ray.init(address="local", num_cpus=4, include_dashboard=True, dashboard_port=own_dashboard(),
             log_to_driver=True)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory) -> dict:
    """A small synthetic COCO dataset: 16 train / 8 val images of 64-128 px."""
    from pipeline.synthetic import SyntheticConfig, make_synthetic

    out = tmp_path_factory.mktemp("shapes")
    return make_synthetic(str(out), train=16, val=8, seed=7,
                          config=SyntheticConfig(min_side=64, max_side=128, max_objects=3, min_object=12, max_object=40))


@pytest.fixture(scope="session")
def demo_val(tmp_path_factory) -> dict:
    """The first 12 validation images of the demo's synthetic set (seed 0, 96-192 px), on which
    the shipped detr-tiny (tests.SHIPPED) detects well: trained on that set's training split."""
    from pipeline.synthetic import SyntheticConfig, make_synthetic

    out = tmp_path_factory.mktemp("demo-val")
    return make_synthetic(str(out), train=0, val=12, seed=0,
                          config=SyntheticConfig(min_side=96, max_side=192, max_objects=4))


@pytest.fixture(scope="session")
def segm_fixture(reference_dir: Path) -> dict:
    """The reference DETRsegm's fixture (../shared/reference/README.md), its backbone's
    convolution weights dequantized into the state_dict."""
    import torch

    fixture = torch.load(reference_dir / "detr_segm_fixture.pt", weights_only=True)
    state = dict(fixture["state_dict"])
    for name, q in fixture["quantized_backbone"].items():
        state[name] = q["int8"].float() * 2.0 ** -q["exponent"]
    return {**fixture, "state_dict": state}
