"""jobs/train.py --dry-run: a run's inputs checked before anything starts, nothing trained."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pipeline.synthetic import SyntheticConfig, make_synthetic
from pipeline.training.preflight import dry_run
from tests import REPO
from tests.pipeline.training import small_run


def test_dry_run_reports_the_inputs_and_trains_nothing(tmp_path):
    shapes = make_synthetic(str(tmp_path / "shapes"), train=12, val=4, seed=3,
                            config=SyntheticConfig(min_side=64, max_side=96, max_objects=2, min_object=12, max_object=30))
    ok = dry_run(small_run(shapes, tmp_path / "runs", "dry", val_annotations=shapes["val_annotations"],
                         val_images=shapes["val_images"]), check_all_files=True)
    assert ok["ok"] and ok["train"]["images"] == 12 and ok["val"]["images"] == 4 and ok["train"]["missing_files"] == 0
    assert ok["train"]["files_checked"] == 12 and ok["resources"]["at_least"] == {"CPU": 1.5}
    assert ok["model"]["preset"] == "detr-tiny" and ok["storage"] == {
        "run": str(tmp_path / "runs" / "dry"), "resumes": False, "checkpoints": 0, "keep": 3,
        "tensorboard": str(tmp_path / "runs" / "dry" / "tensorboard"),
        "curves": str(tmp_path / "runs" / "dry" / "curves.png"), "mlflow": None}

    coco = json.loads(Path(shapes["train_annotations"]).read_text())
    image = coco["images"][0]
    coco["annotations"] += [
        {"id": 9001, "image_id": image["id"], "category_id": coco["categories"][0]["id"], "iscrowd": 0, "area": 1,
         "bbox": [image["width"] - 5, 2, 20, 10]},  # reaches outside: clipped
        {"id": 9002, "image_id": image["id"], "category_id": coco["categories"][0]["id"], "iscrowd": 0, "area": 1,
         "bbox": [image["width"] + 5, 2, 20, 10]},  # entirely outside: dropped
    ]
    Path(shapes["train_annotations"]).write_text(json.dumps(coco))
    (Path(shapes["train_images"]) / coco["images"][1]["file_name"]).unlink()
    proc = subprocess.run(
        [sys.executable, "jobs/train.py", "--annotations", shapes["train_annotations"], "--images",
         shapes["train_images"], "--storage", str(tmp_path / "runs"), "--name", "dry", "--preset", "detr-r50",
         "--workers", "4", "--gpu", "--dry-run", "--check-all-files"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    headline, line = proc.stdout.strip().splitlines()[-2:]
    summary = json.loads(line)
    assert headline.startswith("dry run: the run would fail; 12 training images")
    train = summary["train"]
    assert (train["missing_files"], train["clipped_boxes"], train["dropped_boxes"]) == (1, 1, 1)
    assert train["missing_examples"] == [coco["images"][1]["file_name"]] and len(train["problems"]) >= 3
    assert summary["initialisation"].startswith("detr-r50 starts from an ImageNet backbone")
    assert summary["resources"]["at_least"] == {"CPU": 4.5, "GPU": 4} and summary["model"]["parameters"] > 4e7
    assert not (tmp_path / "runs").exists()  # nothing trained, nothing written
