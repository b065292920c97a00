"""Scheduled re-evaluation: new checkpoints only, a history without duplicates, regressions flagged."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from model.checkpoint import save_checkpoint
from model.segmentation import build_detr
from pipeline.evaluation.config import ReevaluateConfig
from pipeline.evaluation.reevaluation import find_checkpoints, read_history, reevaluate, write_row
from pipeline.evaluation.scoring import DEFAULT_BACKEND, STAT_NAMES, stat_names
from pipeline.predictions import SCORE_THRESHOLD
from tests import REPO


def new_checkpoint(folder: Path, seed: int) -> str:
    torch.manual_seed(seed)
    return save_checkpoint(str(folder), build_detr("detr-tiny", num_classes=12))


def config(tmp_path: Path, tiny_shapes: dict) -> ReevaluateConfig:
    return ReevaluateConfig(checkpoints=str(tmp_path / "runs"), images=tiny_shapes["val_images"],
                            annotations=tiny_shapes["val_annotations"], history=str(tmp_path / "history"),
                            min_size=96, max_size=160, actors=(1, 1))


def test_only_new_checkpoints_are_scored(ray_cluster, tiny_shapes, tmp_path):
    runs = tmp_path / "runs" / "shapes"
    new_checkpoint(runs / "checkpoint_000000", 0)
    new_checkpoint(runs / "checkpoint_000001", 1)
    cfg = config(tmp_path, tiny_shapes)
    assert [Path(c["uri"]).parent.name for c in find_checkpoints(cfg.checkpoints)] == [
        "checkpoint_000000", "checkpoint_000001"]

    first = reevaluate(cfg)
    assert len(first["evaluated"]) == 2 and first["rows"] == 2
    rows = read_history(cfg.history)
    assert all(set(STAT_NAMES) <= set(r) and r["images"] == 8 and r["errors"] == "{}" for r in rows)
    assert rows[0]["weights"] != rows[1]["weights"] and rows[0]["dataset"] == rows[1]["dataset"]
    assert all(r["backend"] == DEFAULT_BACKEND and r["max_dets"] == 100 for r in rows)
    assert (tmp_path / "history" / "history.png").stat().st_size > 0
    assert "checkpoint_000001" in (tmp_path / "history" / "report.md").read_text()

    again = reevaluate(cfg)
    assert again["evaluated"] == [] and again["rows"] == 2  # nothing new: no detection at all

    shutil.copytree(runs / "checkpoint_000001", runs / "copy_of_1")  # same weights, another name
    new_checkpoint(runs / "checkpoint_000002", 2)
    third = reevaluate(cfg)
    assert [Path(e["checkpoint"]).parent.name for e in third["evaluated"]] == ["checkpoint_000002"]
    assert third["rows"] == 3 and third["found"] == 4 and len(third["already_scored"]) == 2
    assert [Path(c).parent.name for c in third["copies"]] == ["copy_of_1"]
    from pipeline.progress import reevaluation_headline

    assert reevaluation_headline(third).startswith(
        "scored 1 of 4 checkpoint files (2 already scored, 1 copies of scored weights): ")


def test_regression_fails_the_job_and_concurrent_runs_do_not_duplicate(ray_cluster, tiny_shapes, tmp_path):
    cfg = config(tmp_path, tiny_shapes)
    dataset = "sha256:" + hashlib.sha256(Path(cfg.annotations).read_bytes()).hexdigest()
    earlier = {"evaluated_at": "2026-01-01T00:00:00+00:00", "checkpoint_size": 1, "checkpoint_modified": 0.0,
               "weights": "sha256:old", "dataset": dataset, "per_category": "{}", "images": 8, "detections": 0,
               "missed_images": 0, "errors": "{}", "predictions": "", "detect_seconds": 0.0, "evaluate_seconds": 0.0}
    # an earlier, better checkpoint's row, written before the cap was a parameter (so: 100) ...
    write_row(cfg.history, {**earlier, "key": "earlier", "checkpoint": "/old/checkpoint.pt",
                            "parameters": json.dumps({"max_size": 160, "min_size": 96,
                                                      "score_threshold": SCORE_THRESHOLD}),
                            **{name: 0.5 for name in STAT_NAMES}})
    # ... and a far better one at another cap: another series, never compared
    write_row(cfg.history, {**earlier, "key": "other-cap", "checkpoint": "/old/other-cap.pt", "max_dets": 300,
                            "parameters": json.dumps({"max_dets": 300, "max_size": 160, "min_size": 96,
                                                      "score_threshold": SCORE_THRESHOLD}),
                            **{name: 0.9 for name in stat_names(300)}})
    new_checkpoint(tmp_path / "runs" / "checkpoint_000000", 3)
    env = dict(os.environ, RAY_ADDRESS=ray_cluster.get_runtime_context().gcs_address)
    command = [sys.executable, "jobs/reevaluate.py", "--checkpoints", cfg.checkpoints, "--images", cfg.images,
               "--annotations", cfg.annotations, "--history", cfg.history, "--min-size", "96", "--max-size", "160",
               "--actors", "1,1", "--fail-on-regression", "10"]
    procs = [subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes[-1] == 3 and codes[0] in (0, 3), [o[1][-2000:] for o in outputs]
    summaries = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    flagged = next(s for s in summaries if s["regressions"])
    assert {g["against"] for g in flagged["regressions"]} == {"previous", "best"}
    assert {g["reference"] for g in flagged["regressions"]} == {"/old/checkpoint.pt"}
    history = read_history(cfg.history)
    assert len(history) == 3 and len({r["key"] for r in history}) == 3
    assert {r["max_dets"] for r in history} == {100, 300}


def test_a_wrong_images_folder_stores_nothing_and_says_so(ray_cluster, tiny_shapes, tmp_path):
    """Images mostly missing: no history row, exit 1 with one line; the corrected command then
    scores that checkpoint."""
    new_checkpoint(tmp_path / "runs" / "checkpoint_000000", 0)
    cfg = config(tmp_path, tiny_shapes)
    (tmp_path / "elsewhere").mkdir()
    env = dict(os.environ, RAY_ADDRESS=ray_cluster.get_runtime_context().gcs_address)
    command = [sys.executable, "jobs/reevaluate.py", "--checkpoints", cfg.checkpoints, "--images",
               str(tmp_path / "elsewhere"), "--annotations", cfg.annotations, "--history", cfg.history,
               "--min-size", "96", "--max-size", "160", "--actors", "1,1"]
    wrong = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    last = wrong.stderr.strip().splitlines()[-1]
    assert wrong.returncode == 1 and last.startswith("reevaluate: 8 of the 8 evaluation images"), wrong.stderr[-2000:]
    assert "'missing': 8" in last and "no history row was written" in last and "--images" in last
    assert read_history(cfg.history) == []
    missing = subprocess.run(command[:3] + [str(tmp_path / "nowhere")] + command[4:], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=600)
    assert missing.returncode == 1 and missing.stderr.strip().splitlines() == [
        f"reevaluate: no checkpoints folder or file at {tmp_path / 'nowhere'}"]
    assert len(reevaluate(cfg)["evaluated"]) == 1 and len(read_history(cfg.history)) == 1
