"""ONNX of the fixed-size families' folders (RT-DETR, RT-DETRv2, D-FINE, DEIMv2, RF-DETR, LW-DETR),
verified against PyTorch before it is written, and detection from the graph as from the folder
(any batch, through the graph's static one); the padded families refused."""
from __future__ import annotations

import pytest
import torch

from model.checkpoint import load_checkpoint, read_checkpoint
from model.export import export_checkpoint
from model.export_formats import ExportError
from model.family_export import paired_differences, sample_images
from model.onnx_model import OnnxDetr, read_onnx
from tests.families import family_folder

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.export


@pytest.mark.parametrize("model_type", ["rt_detr_v2", "d_fine"])
def test_export_verifies_and_runs_any_batch(model_type, tmp_path):
    family_folder(model_type, tmp_path / "folder")
    report = export_checkpoint(str(tmp_path / "folder"), str(tmp_path / "model.onnx"), log=lambda line: None)
    assert report["batch"] == 8 and max(report["max_abs_difference"].values()) <= 1e-4
    config, graph, weights, contract = read_onnx(str(tmp_path / "model.onnx"))
    folder_config, state_dict, folder_contract = read_checkpoint(str(tmp_path / "folder"))
    assert (config.model_type, config.num_classes, contract, weights) == (
        folder_config.model_type, folder_config.num_classes, folder_contract, report["weights"])
    model, _ = load_checkpoint(str(tmp_path / "folder"))
    run = OnnxDetr(graph)
    for batch in (3, 11):  # below the graph's batch (padded) and above it (split)
        images = sample_images(batch, contract, seed=100 + batch)
        with torch.no_grad():
            expected = model(images, None)
        got = run(images, None)
        names = ("pred_logits", "pred_boxes")  # queries the encoder scored alike may come in either order
        assert max(paired_differences(tuple(expected[n] for n in names), tuple(got[n] for n in names))) <= 1e-4


@pytest.mark.parametrize("model_type", ["rt_detr", "deimv2", "rf_detr", "lw_detr"])
def test_the_other_fixed_size_families_export_verified(model_type, tmp_path):
    """Written only after the graph reproduced PyTorch at batches 1, 7, 8 and 9 (within TOLERANCE)."""
    family_folder(model_type, tmp_path / "folder")
    report = export_checkpoint(str(tmp_path / "folder"), str(tmp_path / "model.onnx"), log=lambda line: None)
    assert (tmp_path / "model.onnx").is_file() and max(report["max_abs_difference"].values()) <= 1e-4


def test_a_family_that_pads_is_refused(tmp_path):
    family_folder("deformable_detr", tmp_path / "folder")
    with pytest.raises(ExportError, match="ONNX export of deformable_detr is not supported"):
        export_checkpoint(str(tmp_path / "folder"), str(tmp_path / "model.onnx"), log=lambda line: None)
    assert not (tmp_path / "model.onnx").exists()
