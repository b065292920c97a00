"""`make bench-gpu` in its small CPU mode: every part runs and checks itself, so that the command
works the first time a GPU is at hand."""
from __future__ import annotations

import json
import subprocess
import sys

from tests import REPO


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
    for batch in ("batch_2", "batch_4"):
        figures = result["detection"][batch]
        assert figures["images_per_s"] > 0 and figures["bare_images_per_s"] > 0 and 0 < figures["batch_fill"] <= 1
    assert result["decode"]["largest_pixel_difference"] == 0  # the same decoder on a CPU
    assert result["training"]["batch_2"]["images_per_s"] > 0
    assert result["onnx"]["max_abs_difference"] <= 1e-3
    assert result["bf16"]["largest_box_change_px"] >= 0
    for name in ("rtdetr_v2_r18", "dfine_s"):  # the tiny presets on a CPU
        row = result["families"][name]
        assert row["batch_fill"] == 1.0  # a fixed-size contract: every batch full
        assert row["training"]["batch"] == 2 and row["transformers_loop_images_per_s"] > 0
