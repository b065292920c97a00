"""Fine-tuning a transformers family's folder on Ray Train: its own loss, num_classes from the
dataset, its fixed-size contract recorded, validated by the detection path. (Resuming is the
same RunState for every model: tests/pipeline/training/test_run.py.)"""
from __future__ import annotations

from functools import partial

import torch

from model.checkpoint import load_checkpoint
from model.families import FamilyConfig
from pipeline.training.run import run_training
from tests.families import FIXED, family_folder
from tests.pipeline.training import small_run, tensorboard_scalars


def test_fine_tune_a_family_folder(ray_cluster, tiny_shapes, tmp_path):
    original = family_folder("rt_detr_v2", tmp_path / "rtdetr")  # 4 labels; the shapes have 12 ids
    config = partial(small_run, tiny_shapes, tmp_path, "rtdetr", init=str(tmp_path / "rtdetr"), model_overrides={},
                     val_annotations=tiny_shapes["val_annotations"], val_images=tiny_shapes["val_images"])
    first = run_training(config(epochs=1))
    model, tuned = load_checkpoint(first["checkpoint"])
    assert isinstance(tuned, FamilyConfig) and tuned.model_type == "rt_detr_v2" and tuned.num_classes == 12
    assert model.contract.fixed_size == (FIXED, FIXED)  # the folder's processor's, kept by training
    assert "AP" in first["metrics"] and first["metrics"]["loss_vfl"] > 0  # validated; the family's own loss terms
    weight = "model.model.decoder.layers.0.self_attn.o_proj.weight"
    assert not torch.equal(model.state_dict()[weight], original.state_dict()[weight.removeprefix("model.")])
    steps = first["metrics"]["steps"]
    assert [s for s, _ in tensorboard_scalars(first["run"])["train/loss"]] == list(range(1, steps + 1))
