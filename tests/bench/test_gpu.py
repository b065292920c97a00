"""`make bench-gpu` in its small CPU mode: every part runs and checks itself, so that the command
works the first time a GPU is at hand."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from tests import REPO

pytestmark = pytest.mark.bench


def test_the_gpu_benchmark_runs_every_part_on_a_cpu():
    proc = subprocess.run([sys.executable, "-m", "bench.gpu", "--small"], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    failed = {name: result[name] for name in ("detection", "decode", "training", "onnx", "bf16")
              if "error" in result[name]}
    failed.update({name: row for name, row in result["families"].items() if "error" in row})
    assert not failed, failed
    assert result["device"] == "cpu" and result["preset"] == "detr-tiny"
    assert result["detection"]["images"] == result["decode"]["images"] == 8
    for batch in ("batch_2", "batch_4"):
        figures = result["detection"][batch]
        # both rates are rounded to 0.1 images/s and the ratio to 0.001: it lies where those roundings allow
        pipeline, bare = figures["images_per_s"], figures["bare_images_per_s"]
        assert (pipeline - 0.05) / (bare + 0.05) - 5e-4 <= figures["pipeline_over_bare"] \
            <= (pipeline + 0.05) / (bare - 0.05) + 5e-4
        assert 0 < figures["batch_fill"] <= 1 and figures["gpu_memory_peak_gib"] is None  # no GPU memory on a CPU
    assert result["decode"]["largest_pixel_difference"] == 0  # the same decoder on a CPU
    assert math.isfinite(result["training"]["batch_2"]["loss"])
    assert result["onnx"]["max_abs_difference"] <= 1e-3
    # bf16 autocast ran (boxes moved) and moved no box by 2 % of the canvas (the heads run in float32)
    canvas = max(int(side) for side in result["bf16"]["canvas"].split("x"))
    assert 0 < result["bf16"]["largest_box_change_px"] < 0.02 * canvas
    assert 0 < result["bf16"]["largest_score_change"] < 0.05
    for name in ("rtdetr_v2_r18", "dfine_s"):  # the tiny presets on a CPU
        row = result["families"][name]
        assert row["batch_fill"] == 1.0  # a fixed-size contract: every batch full
        assert row["training"]["batch"] == 2 and math.isfinite(row["training"]["loss"])
