"""Our DETR reproduces the reference implementation's numbers on its small fixture, with seeded and
with stored weights."""
from __future__ import annotations

import pytest
import torch

from model.criterion import build_criterion
from model.detr import pad_images
from model.postprocess import PostProcess
from tests.reference import model_of, oracle

ATOL = 1e-5


# Both oracles: the compact one (seeded weights, in the repository) always, the full one (stored
# weights) where ../shared/reference is found (tests/reference.py).
@pytest.fixture(scope="module", params=["compact", "full"])
def small_fixture(request):
    return oracle("small", request.param)


@pytest.fixture(scope="module")
def fixture_model(small_fixture):
    return model_of(small_fixture)


@pytest.fixture(scope="module")
def fixture_config(fixture_model):
    return fixture_model.config


def _close(actual, expected, atol=ATOL):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


@pytest.fixture(params=["main", "mask_case"])
def case(request, small_fixture):
    return small_fixture if request.param == "main" else small_fixture["mask_case"]


def test_padding_matches_reference(case):
    padded, mask = pad_images(case["images"])
    _close(padded, case["padded_tensors"])
    assert torch.equal(mask, case["padding_mask"])


def test_feature_mask_and_position_embedding(fixture_model, case):
    with torch.inference_mode():
        features, mask = fixture_model.backbone[0](case["padded_tensors"], case["padding_mask"])
        pos = fixture_model.backbone[1](mask)
    assert torch.equal(mask, case["feature_mask"])
    _close(pos, case["pos_embed"])


def test_mask_case_masks_some_features(small_fixture):
    assert small_fixture["mask_case"]["feature_mask"].any()


@pytest.mark.parametrize("as_batch", [False, True])
def test_outputs_match_reference(fixture_model, case, as_batch):
    with torch.inference_mode():
        if as_batch:
            out = fixture_model(case["padded_tensors"], case["padding_mask"])
        else:
            out = fixture_model(case["images"])
    _close(out["pred_logits"], case["pred_logits"])
    _close(out["pred_boxes"], case["pred_boxes"])
    assert len(out["aux_outputs"]) == len(case["aux_outputs"]) == 1
    for ours, theirs in zip(out["aux_outputs"], case["aux_outputs"]):
        _close(ours["pred_logits"], theirs["pred_logits"])
        _close(ours["pred_boxes"], theirs["pred_boxes"])


def test_postprocess_matches_reference(fixture_model, case):
    with torch.inference_mode():
        results = PostProcess()(fixture_model(case["images"]), case["target_sizes"])
    for ours, theirs in zip(results, case["postprocess"]):
        _close(ours["scores"], theirs["scores"])
        assert torch.equal(ours["labels"], theirs["labels"])
        _close(ours["boxes"], theirs["boxes"], atol=1e-3)  # pixels: 1e-5 relative to ~100 px


def _reference_outputs(fixture):
    return {
        "pred_logits": fixture["pred_logits"],
        "pred_boxes": fixture["pred_boxes"],
        "aux_outputs": fixture["aux_outputs"],
    }


def test_matcher_indices_match_reference(small_fixture, fixture_config):
    criterion = build_criterion(fixture_config.num_classes, fixture_config.dec_layers)
    outputs = _reference_outputs(small_fixture)
    for ours, theirs in zip(criterion.matcher(outputs, small_fixture["targets"]), small_fixture["matcher_indices"]):
        assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
    aux = criterion.matcher(outputs["aux_outputs"][0], small_fixture["targets"])
    for ours, theirs in zip(aux, small_fixture["aux_matcher_indices"][0]):
        assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])


def test_losses_match_reference(small_fixture, fixture_config):
    criterion = build_criterion(fixture_config.num_classes, fixture_config.dec_layers)
    assert criterion.weight_dict == pytest.approx(small_fixture["weight_dict"])
    losses = criterion(_reference_outputs(small_fixture), small_fixture["targets"])
    assert set(losses) == set(small_fixture["losses"])
    for name, expected in small_fixture["losses"].items():
        _close(losses[name], expected)
    _close(criterion.total_loss(losses), small_fixture["total_weighted_loss"])


def test_losses_from_our_forward_match_reference(fixture_model, small_fixture, fixture_config):
    criterion = build_criterion(fixture_config.num_classes, fixture_config.dec_layers)
    with torch.no_grad():
        losses = criterion(fixture_model(small_fixture["images"]), small_fixture["targets"])
    _close(criterion.total_loss(losses), small_fixture["total_weighted_loss"])
