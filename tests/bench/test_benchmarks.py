"""Every benchmark in its small mode: each runs its command line's `main` and prints the figures
it promises, so that none rots unseen (the GPU benchmark: test_gpu.py). They run in the test
process (its Python is warm, its Ray is joined), but s3_reads, which points AWS_* at a server of
its own. Their speeds are not asserted on (tests never assert on time); what each checks as it
runs (rows, equal outputs) and what it reports are."""
from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

from tests import REPO, SHIPPED

pytestmark = pytest.mark.bench


def s3_reads(figures: list[dict]) -> None:  # one GET for a whole object, whatever its size
    assert figures[-1]["image 200 KB"]["read_bytes"]["gets"] == 1


def evaluation(figures: list[dict]) -> None:  # the fast scorers' stats are pycocotools' (the tests prove 1e-9)
    assert max(figures[-1]["stats_max_abs_difference"].values()) <= 1e-9
    assert max(figures[-1]["segm_stats_max_abs_difference"].values()) <= 1e-9


def masks(figures: list[dict]) -> None:
    assert figures[-1]["images"] == 4


def dry_run(figures: list[dict]) -> None:
    assert (figures[-1]["images"], figures[-1]["boxes"]) == (300, 2000)


def train_throughput(figures: list[dict]) -> None:
    assert figures[-1]["preset"] == "detr-tiny" and figures[-1]["batch"] == 2


def forward_vs_huggingface(figures: list[dict]) -> None:  # the same weights give the same outputs
    (case,) = figures[-1]["results"]
    assert case["case"] == "r18-small batch 1 256x256" and case["max_abs_output_diff"] < 1e-4


def learning(figures: list[dict]) -> None:
    final = figures[-1]
    assert final["curve"] and final["curve"][-1]["steps"] >= 1 and 0 <= final["curve"][-1]["AP"] <= 1


def canvas_ap(figures: list[dict]) -> None:
    (row,) = figures
    assert row["images"] == 4 and row["contract_recorded"]
    assert all(0 <= row[way]["AP"] <= 1 for way in ("batch", "alone", "detection"))


def export(figures: list[dict]) -> None:  # a row per size, each after the export verified itself
    assert [row["size"] for row in figures] == ["128x160", "256x320"] and figures[0]["onnx_mb"] > 1


def detection(figures: list[dict]) -> None:  # the benchmark checks each run's rows itself
    final = figures[-1]
    assert final["images"] == [4, 12] and 0 < final["batch_fill_8_4"] <= 1
    assert {"driver_peak_rss_mib_10", "driver_peak_rss_mib_100"} <= set(final)


def scaling(figures: list[dict]) -> None:
    assert figures[-1]["images"] == [4, 12] and "scaling_2_vs_1" in figures[-1]


def train_overhead(figures: list[dict]) -> None:
    assert len(figures[-1]["ratios"]) == 1 and figures[-1]["images"] == 8


def small(name: str, args: list[str], check, mark=None):
    return pytest.param(name, args, check, marks=[mark] if mark else [], id=name)


# One torch thread where a benchmark takes --threads, as every process of the suite has (conftest.py)
SMALL = [
    small("evaluation", ["--images", "20", "--per-image", "10", "--mask-per-image", "5", "--scale", "2"], evaluation),
    small("masks", ["--images", "4", "--threads", "1"], masks),
    small("dry_run", ["--images", "300", "--boxes", "2000"], dry_run),
    small("train_throughput", ["--preset", "detr-tiny", "--size", "96", "128", "--steps", "1", "--warmup", "1",
                               "--threads", "1"], train_throughput),
    small("forward_vs_huggingface", ["--small", "--repeats", "1", "--threads", "1"], forward_vs_huggingface),
    small("learning", ["--minutes", "0.05", "--eval-every", "0.05", "--train", "8", "--val", "4", "--threads", "1"],
          learning),
    small("canvas_ap", ["--checkpoints", str(SHIPPED), "--images", "4", "--batch-size", "2", "--threads", "1"], canvas_ap),
    small("export", ["--presets", "detr-tiny", "--repeats", "1", "--threads", "1"], export, pytest.mark.export),
]
# Those that run on Ray: each starts a Ray of its own, unless one is connected (the suite's, here)
ON_RAY = [
    small("detection", ["--images", "4", "--scale", "0.15", "--memory-paths", "10"], detection),
    small("scaling", ["--images", "4", "--batch-size", "2"], scaling),
    small("train_overhead", ["--images", "8", "--epochs", "2", "--rounds", "1", "--batch-size", "2"], train_overhead),
]


def figures(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_s3_reads_runs_in_its_small_mode():
    proc = subprocess.run([sys.executable, "-m", "bench.s3_reads", "--small"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s3_reads(figures(proc.stdout))


@pytest.mark.parametrize("name, args, check", SMALL)
def test_a_benchmark_runs_in_its_small_mode(name, args, check, capsys):
    importlib.import_module(f"bench.{name}").main(args)
    check(figures(capsys.readouterr().out))


@pytest.mark.parametrize("name, args, check", ON_RAY)
def test_a_ray_benchmark_runs_in_its_small_mode_on_the_suites_ray(ray_cluster, name, args, check, capsys):
    """On the test process's Ray: no Ray of its own to start (their command line is the same)."""
    importlib.import_module(f"bench.{name}").main(args)
    check(figures(capsys.readouterr().out))
