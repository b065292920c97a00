"""The benchmarks in their small modes: each runs as `make bench` or a user would run it and
prints the figures it promises, so that none rots unseen (the GPU benchmark: test_gpu.py).
Their figures are not asserted on: tests never assert on time."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests import REPO

SMALL = {
    "s3_reads": ["--small"],
    "evaluation": ["--images", "20", "--per-image", "10", "--mask-per-image", "5", "--scale", "2"],
    "masks": ["--images", "4"],
    "dry_run": ["--images", "300", "--boxes", "2000"],
    "train_throughput": ["--preset", "detr-tiny", "--size", "96", "128", "--steps", "1", "--warmup", "1"],
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_a_benchmark_runs_in_its_small_mode(name):
    proc = subprocess.run([sys.executable, "-m", f"bench.{name}", *SMALL[name]], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    if name == "s3_reads":  # one GET for a whole object, whatever its size
        assert figures["image 200 KB"]["read_bytes"]["gets"] == 1
    elif name == "evaluation":  # the fast scorers' stats are pycocotools' (1e-9, as the tests prove)
        assert max(figures["stats_max_abs_difference"].values()) <= 1e-9
        assert max(figures["segm_stats_max_abs_difference"].values()) <= 1e-9
    elif name == "dry_run":
        assert (figures["images"], figures["boxes"]) == (300, 2000)
    elif name == "masks":
        assert figures["images"] == 4
    else:
        assert figures["preset"] == "detr-tiny" and figures["batch"] == 2
