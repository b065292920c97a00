"""TrainConfig: a preset's recipe belongs to its config, for a library call and the command line alike."""
from __future__ import annotations

import json
import subprocess
import sys

from pipeline.training.config import PAPER_RECIPE, RECIPES, TrainConfig
from tests import REPO


def dry_run_recipe(shapes: dict, tmp_path, *flags: str) -> dict:
    """The recipe jobs/train.py would train with, from its --dry-run summary."""
    proc = subprocess.run([sys.executable, "jobs/train.py", "--annotations", shapes["train_annotations"],
                           "--images", shapes["train_images"], "--storage", str(tmp_path), "--name", "r",
                           "--dry-run", *flags], cwd=REPO, capture_output=True, text=True, timeout=300)
    return json.loads(proc.stdout.strip().splitlines()[-1])["model"]["recipe"]


def test_a_preset_trains_with_its_recipe_from_python_and_from_the_command_line(tiny_shapes, tmp_path):
    scratch = TrainConfig("a.json", "img", "runs", "r", preset="detr-tiny")
    assert scratch.recipe() == RECIPES["detr-tiny"] == {"lr": 3e-4, "lr_backbone": 3e-4, "warmup_steps": 200,
                                                          "encoder_matches": 4, "batch_size": 8}
    assert dry_run_recipe(tiny_shapes, tmp_path) == scratch.recipe()
    # a value given wins, in both
    given = TrainConfig("a.json", "img", "runs", "r", lr=1e-3, batch_size=2)
    assert (given.lr, given.batch_size, given.warmup_steps) == (1e-3, 2, 200)
    assert dry_run_recipe(tiny_shapes, tmp_path, "--lr", "1e-3", "--batch-size", "2") == given.recipe()
    # fine-tuning a checkpoint (--init) and the paper's presets keep the paper's (the job builds its
    # config as for the cases above, so Python alone checks these)
    fine_tune = TrainConfig("a.json", "img", "runs", "r", init="ckpt.pt")
    assert fine_tune.recipe() == PAPER_RECIPE == TrainConfig("a.json", "img", "runs", "r", preset="detr-r50").recipe()
