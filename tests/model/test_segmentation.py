"""The mask head against the reference's DETRsegm (tests/reference.py: seeded and stored weights):
a panoptic release file loads through the checkpoint reader, and outputs, matching, mask losses,
PostProcessSegm and PostProcessPanoptic equal the reference's; the mask head on detr-tiny."""
from __future__ import annotations

import argparse

import pytest
import torch

from model.checkpoint import load_checkpoint, save_checkpoint
from model.criterion import build_criterion
from model.mask_postprocess import PostProcessPanoptic, PostProcessSegm
from model.postprocess import PostProcess
from model.segmentation import build_detr
from tests.reference import oracle

ATOL = 1e-5


@pytest.fixture(scope="module", params=["compact", "full"])
def segm_fixture(request):
    """Both oracles: seeded weights (in the repository) and stored ones, where found (tests/reference.py)."""
    return oracle("segm", request.param)


def _close(actual, expected, atol=ATOL):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


@pytest.fixture(scope="module")
def segm_model(segm_fixture, tmp_path_factory):
    """The fixture's weights written as a reference release file (detr-r50-panoptic-*.pth's
    layout: {"model": DETRsegm's state_dict, "args": ...}) and read back by load_checkpoint."""
    path = tmp_path_factory.mktemp("segm") / "detr-r50-panoptic.pth"
    torch.save({"model": segm_fixture["state_dict"], "args": argparse.Namespace(nheads=8, dropout=0.0)}, path)
    model, config = load_checkpoint(str(path))
    assert config.masks and (config.hidden_dim, config.enc_layers, config.dec_layers, config.num_queries,
                             config.num_classes) == (128, 1, 2, 10, 20)
    return model


def test_outputs_equal_the_reference(segm_model, segm_fixture):
    with torch.inference_mode():
        out = segm_model(segm_fixture["padded_tensors"], segm_fixture["padding_mask"])
    for name in ("pred_logits", "pred_boxes", "pred_masks"):
        _close(out[name], segm_fixture[name])
    assert out["pred_masks"].shape == (2, 10, 24, 32)  # stride 4 of the padded 96x128 batch
    for ours, theirs in zip(out["aux_outputs"], segm_fixture["aux_outputs"], strict=True):
        _close(ours["pred_logits"], theirs["pred_logits"])
        _close(ours["pred_boxes"], theirs["pred_boxes"])


def test_matching_and_mask_losses_equal_the_reference(segm_model, segm_fixture):
    criterion = build_criterion(20, 2, masks=True)
    assert {k: criterion.weight_dict[k] for k in ("loss_mask", "loss_dice")} == {"loss_mask": 1.0, "loss_dice": 1.0}
    with torch.no_grad():
        out = segm_model(segm_fixture["padded_tensors"], segm_fixture["padding_mask"])
        indices = criterion.matcher(out, segm_fixture["targets"])
        losses = criterion(out, segm_fixture["targets"])
    for (src, tgt), (ref_src, ref_tgt) in zip(indices, segm_fixture["matcher_indices"], strict=True):
        assert torch.equal(src, ref_src) and torch.equal(tgt, ref_tgt)
    for name, value in segm_fixture["losses"].items():
        _close(losses[name], value)
    assert "loss_mask_0" not in losses  # masks only for the final layer, as the reference


def test_masks_and_panoptic_segments_equal_the_reference(segm_fixture):
    """Post-processing of the reference's own outputs (ours equal them to 1e-5, above): its masks
    and panoptic segments, exactly. (On our outputs the random weights' near-tied masks would make
    the panoptic argmax depend on the thread count's rounding.)"""
    out = {name: segm_fixture[name] for name in ("pred_logits", "pred_boxes", "pred_masks")}
    with torch.inference_mode():
        results = PostProcess()(out, segm_fixture["orig_sizes"])
        results = PostProcessSegm()(results, out, segm_fixture["orig_sizes"], segm_fixture["processed_sizes"])
        panoptic = PostProcessPanoptic(segm_fixture["panoptic_is_thing"], segm_fixture["panoptic_threshold"])(
            out, segm_fixture["processed_sizes"], segm_fixture["orig_sizes"])
    for ours, theirs in zip(results, segm_fixture["postprocess_segm"], strict=True):
        assert ours["masks"].dtype == torch.uint8 and torch.equal(ours["masks"], theirs["masks"])
    for ours, theirs in zip(panoptic, segm_fixture["panoptic"], strict=True):
        assert torch.equal(ours["id_map"], theirs["id_map"])
        assert ours["segments_info"] == theirs["segments_info"]
    if segm_fixture["source"] == "full":  # (the seeded weights give one segment an image)
        assert len(panoptic[1]["segments_info"]) > 1  # a non-integer resize (80x112 -> 120x168) among them


def test_the_mask_head_on_detr_tiny_round_trips_and_keeps_float32(tmp_path):
    """small_cnn's stages are a stride finer than a ResNet's: masks at stride 2. A checkpoint of
    ours carries the head; under bf16 autocast the masks stay float32."""
    torch.manual_seed(0)
    model = build_detr("detr-tiny", num_classes=5, masks=True).eval()
    images = [torch.rand(3, 64, 96), torch.rand(3, 48, 80)]
    with torch.inference_mode():
        out = model(images)
    assert out["pred_masks"].shape == (2, 20, 32, 48)
    loaded, config = load_checkpoint(save_checkpoint(str(tmp_path / "tiny-segm.pt"), model))
    assert config.masks and any(k.startswith("mask_head.") for k in loaded.state_dict())
    with torch.inference_mode():
        _close(loaded(images)["pred_masks"], out["pred_masks"], atol=0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(images)
    assert mixed["pred_masks"].dtype == torch.float32


def test_masks_of_chosen_queries_alone_equal_the_full_heads(segm_model, segm_fixture):
    """Inference's shortcut (the head on the queries kept, not all): the same logits for those,
    -inf for the rest."""
    images, mask = segm_fixture["padded_tensors"], segm_fixture["padding_mask"]
    with torch.inference_mode():
        full = segm_model(images, mask)
        chosen = torch.zeros(full["pred_logits"].shape[:2], dtype=torch.bool)
        chosen[0, [1, 4]] = chosen[-1, 0] = True
        some = segm_model(images, mask, mask_queries=lambda out: chosen)
    torch.testing.assert_close(some["pred_masks"][chosen], full["pred_masks"][chosen], atol=1e-5, rtol=0)
    assert torch.isneginf(some["pred_masks"][~chosen]).all()
    torch.testing.assert_close(some["pred_logits"], full["pred_logits"], atol=0, rtol=0)
