"""A DETR saved in the Hugging Face hub layout loads and matches Hugging Face's own outputs."""
from __future__ import annotations

import os

import pytest
import torch

from bench.hf_weights import randomize_vectors
from model.checkpoint import load_checkpoint
from model.detr import pad_images
from model.safe_load import CheckpointError

transformers = pytest.importorskip("transformers")
pytest.importorskip("timm")


def _random_hf_detr(dilation: bool = False, backbone: str = "resnet18"):
    """A randomly initialised DetrForObjectDetection (nothing is downloaded)."""
    config = transformers.DetrConfig(
        backbone=backbone,
        use_timm_backbone=True,
        use_pretrained_backbone=False,
        dilation=dilation,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        num_queries=10,
        num_labels=7,
        dropout=0.0,
    )
    torch.manual_seed(0)
    model = transformers.DetrForObjectDetection(config).eval()
    randomize_vectors(model)
    return model


def _inputs():
    torch.manual_seed(1)
    return pad_images([torch.randn(3, 96, 128), torch.randn(3, 64, 80)])


@pytest.mark.parametrize("weights_file", ["model.safetensors", "pytorch_model.bin"])
def test_hub_layout_matches_huggingface(tmp_path, weights_file):
    hf_model = _random_hf_detr()
    hf_model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    if weights_file == "pytorch_model.bin":
        from safetensors.torch import load_file

        torch.save(load_file(tmp_path / "model.safetensors"), tmp_path / weights_file)
        os.remove(tmp_path / "model.safetensors")

    model, config = load_checkpoint(str(tmp_path))
    assert (config.backbone, config.hidden_dim, config.nheads, config.num_classes) == ("resnet18", 64, 4, 7)
    _assert_same_outputs(model, hf_model, atol=1e-5)


def _assert_same_outputs(model, hf_model, atol: float) -> None:
    images, mask = _inputs()
    with torch.inference_mode():
        theirs = hf_model(pixel_values=images, pixel_mask=(~mask).long())
        ours = model(images, mask)
    torch.testing.assert_close(ours["pred_logits"], theirs.logits, atol=atol, rtol=0)
    torch.testing.assert_close(ours["pred_boxes"], theirs.pred_boxes, atol=atol, rtol=0)


def test_hub_layout_dc5_r50(tmp_path):
    hf_model = _random_hf_detr(dilation=True, backbone="resnet50")
    hf_model.save_pretrained(tmp_path)
    model, config = load_checkpoint(str(tmp_path))
    assert config.backbone == "resnet50" and config.dilation
    _assert_same_outputs(model, hf_model, atol=1e-5)


def test_hub_segmentation_folder_loads_with_its_mask_head(tmp_path):
    """DetrForSegmentation: the box model under detr., the mask head's names the reference's; the
    masks and boxes equal Hugging Face's, and ids above 90 are stuff (the panoptic releases' rule)."""
    config = _random_hf_detr().config
    # the mask head's group norms need 8 | d_model / 16 and 8 | d_model + heads
    config.d_model, config.encoder_attention_heads, config.decoder_attention_heads = 128, 8, 8
    config.num_labels = 120
    torch.manual_seed(0)
    hf_model = transformers.DetrForSegmentation(config).eval()
    randomize_vectors(hf_model)
    hf_model.save_pretrained(tmp_path)
    model, ours = load_checkpoint(str(tmp_path))
    assert ours.masks and ours.num_classes == 120 and ours.stuff_classes == tuple(range(91, 120))
    images, mask = _inputs()
    with torch.inference_mode():
        theirs = hf_model(pixel_values=images, pixel_mask=(~mask).long())
        out = model(images, mask)
    torch.testing.assert_close(out["pred_logits"], theirs.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(out["pred_boxes"], theirs.pred_boxes, atol=1e-5, rtol=0)
    torch.testing.assert_close(out["pred_masks"], theirs.pred_masks, atol=1e-4, rtol=0)


def test_hub_folder_other_model_type_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(CheckpointError, match="'bert' is not supported; the supported ones are detr, rt_detr"):
        load_checkpoint(str(tmp_path))
