"""Shared fixtures: the reference data beside the repository."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.reference import COMPACT, FULL, REQUIRED, oracle
from tests.reference import model_of as fixture_model_of

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


def pytest_configure(config: pytest.Config) -> None:
    if REQUIRED and not (FULL / "detr_small_fixture.pt").is_file():
        raise pytest.UsageError(f"DETR_REQUIRE_REFERENCE=1 and the full reference fixtures are not at {FULL} "
                                "(set DETR_REFERENCE_DIR to their folder)")


def pytest_terminal_summary(terminalreporter) -> None:
    """One line where the full reference fixtures were not found: what ran instead."""
    if not (FULL / "detr_small_fixture.pt").is_file():
        terminalreporter.write_line(
            f"reference oracles: the full fixtures were not found at {FULL}: every test ran on the compact ones in "
            "tests/fixtures/reference (seeded weights); the full-fixture checks were skipped")


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
    """The oracle files kept in the repository (tests/fixtures/reference): the COCO bbox oracle, the
    detr-r50 layout, and the compact reference fixtures."""
    return COMPACT


@pytest.fixture(scope="session")
def small_fixture() -> dict:
    """The reference small DETR's fixture: the full one (stored weights) where found, else the
    compact one (seeded weights); tests/model/test_reference_fixture.py checks both."""
    return oracle("small")


@pytest.fixture(scope="session")
def fixture_config(small_fixture):
    return fixture_model_of(small_fixture).config


@pytest.fixture(scope="session")
def fixture_model(small_fixture):
    return fixture_model_of(small_fixture)


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
def segm_fixture() -> dict:
    """The reference DETRsegm's fixture (tests/reference.py): full where found, else compact."""
    return oracle("segm")
