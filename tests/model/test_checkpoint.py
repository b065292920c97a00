"""Checkpoint export/import: ours, the reference release layout, Hugging Face folders, s3://."""
from __future__ import annotations

import argparse
import logging
import os

import pytest
import torch

from model.checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from model.config import get_config
from model.safe_load import CheckpointError
from model.segmentation import build_detr


def _assert_same_outputs(model, small_fixture, atol=1e-5):
    with torch.inference_mode():
        out = model(small_fixture["images"])
    torch.testing.assert_close(out["pred_logits"], small_fixture["pred_logits"], atol=atol, rtol=0)
    torch.testing.assert_close(out["pred_boxes"], small_fixture["pred_boxes"], atol=atol, rtol=0)


def test_own_checkpoint_round_trip_file_and_directory(tmp_path, fixture_model, fixture_config, small_fixture):
    optimizer = torch.optim.AdamW([p for p in fixture_model.parameters() if p.requires_grad], lr=1e-4)
    path = save_checkpoint(str(tmp_path / "run"), fixture_model, optimizer=optimizer, epoch=3, extra={"note": "x"})
    assert path == str(tmp_path / "run" / CHECKPOINT_FILE)
    payload = torch.load(path, weights_only=True)  # plain data only
    assert payload["epoch"] == 3 and payload["extra"] == {"note": "x"} and "optimizer" in payload
    for source in (str(tmp_path / "run"), path):
        model, config = load_checkpoint(source)
        assert config == fixture_config
        assert not model.training
        _assert_same_outputs(model, small_fixture)
    single = save_checkpoint(str(tmp_path / "single.pt"), fixture_model)
    assert single.endswith("single.pt") and load_checkpoint(single)[1] == fixture_config


def test_reference_release_file_with_args(tmp_path, small_fixture):
    """A file as the reference's main.py writes it: model, optimizer, args (an argparse.Namespace)."""
    args = argparse.Namespace(nheads=4, dropout=0.0, dilation=False, aux_loss=True, lr=1e-4)
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": small_fixture["state_dict"], "args": args, "epoch": 9}, path)
    model, config = load_checkpoint(str(path))
    assert (config.backbone, config.hidden_dim, config.nheads, config.num_classes) == ("resnet18", 64, 4, 5)
    assert (config.enc_layers, config.dec_layers, config.dim_feedforward, config.num_queries) == (2, 2, 128, 10)
    _assert_same_outputs(model, small_fixture)


def test_reference_state_dict_needs_heads_when_not_default(tmp_path, small_fixture):
    path = tmp_path / "weights.pth"
    torch.save({"model": small_fixture["state_dict"]}, path)
    model, config = load_checkpoint(str(path), nheads=4, dropout=0.0)
    assert config.nheads == 4
    _assert_same_outputs(model, small_fixture)
    bare = tmp_path / "bare.pth"  # a bare state_dict, no "model" wrapper
    torch.save(small_fixture["state_dict"], bare)
    _assert_same_outputs(load_checkpoint(str(bare), nheads=4)[0], small_fixture)


@pytest.mark.parametrize(
    "name,preset",
    [("detr-r50-e632da11.pth", "detr-r50"), ("detr-r50-dc5-f0fb7ef5.pth", "detr-r50-dc5")],
)
def test_published_r50_layout_infers_preset(tmp_path, name, preset):
    reference = build_detr("detr-r50")
    path = tmp_path / name
    torch.save({"model": reference.state_dict()}, path)
    model, config = load_checkpoint(str(path))
    assert config == get_config(preset)
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_r101_depth_is_inferred(tmp_path):
    path = tmp_path / "detr-r101-2c7b67e5.pth"
    torch.save({"model": build_detr("detr-r101").state_dict()}, path)
    assert load_checkpoint(str(path))[1] == get_config("detr-r101")


def test_fine_tune_with_other_num_classes_drops_class_head(tmp_path, small_fixture, caplog):
    path = tmp_path / "ref.pth"
    torch.save({"model": small_fixture["state_dict"], "args": argparse.Namespace(nheads=4)}, path)
    with caplog.at_level(logging.WARNING):
        model, config = load_checkpoint(str(path), num_classes=3)
    assert "class head is re-initialised" in caplog.text
    assert config.num_classes == 3 and model.class_embed.weight.shape == (4, config.hidden_dim)
    state = model.state_dict()
    for key, value in small_fixture["state_dict"].items():
        if not key.startswith("class_embed."):
            assert torch.equal(state[key], value), key


def test_fine_tune_a_two_stage_model_drops_both_class_heads(tmp_path):
    torch.manual_seed(0)
    source = build_detr("detr-tiny", num_classes=12)
    path = save_checkpoint(str(tmp_path / "tiny.pt"), source)
    model, config = load_checkpoint(path, num_classes=3)
    assert config.two_stage and model.query_selection.class_embed.out_features == 4
    state = model.state_dict()
    for key, value in source.state_dict().items():
        if "class_embed." not in key:
            assert torch.equal(state[key], value), key


def test_missing_and_unexpected_keys_are_listed(tmp_path, small_fixture):
    state = dict(small_fixture["state_dict"])
    del state["transformer.decoder.norm.weight"]
    state["transformer.extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save({"model": state, "args": argparse.Namespace(nheads=4)}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(str(path))
    assert "transformer.decoder.norm.weight" in str(info.value)
    assert "transformer.extra.weight" in str(info.value)


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "payload": _Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint(str(path))
    assert not marker.exists()


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": [1, 2]}, path)
    with pytest.raises(CheckpointError, match="not a DETR checkpoint"):
        load_checkpoint(str(path))
    with pytest.raises(FileNotFoundError):
        load_checkpoint(str(tmp_path / "absent.pt"))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(CheckpointError, match="neither"):
        load_checkpoint(str(tmp_path / "empty_dir"))


def test_s3_save_and_load(s3_faults, s3_bucket, fixture_model, fixture_config, small_fixture):
    uri = save_checkpoint(f"{s3_bucket}/runs/a", fixture_model, epoch=1)
    assert uri == f"{s3_bucket}/runs/a/{CHECKPOINT_FILE}"
    key = uri.removeprefix("s3://")
    for source in (f"{s3_bucket}/runs/a", uri):
        reads = s3_faults.reads[key]
        model, config = load_checkpoint(source)
        assert s3_faults.reads[key] == reads + 1  # 45 MB in one GET, not one per chunk
        assert config == fixture_config
        _assert_same_outputs(model, small_fixture)


def test_shape_mismatch_is_a_checkpoint_error(tmp_path, small_fixture):
    path = tmp_path / "ref.pth"
    torch.save({"model": small_fixture["state_dict"]}, path)
    with pytest.raises(CheckpointError, match=r"shape mismatches .*query_embed.weight \(10, 64\) != \(12, 64\)"):
        load_checkpoint(str(path), nheads=4, num_queries=12)


def test_checkpoints_record_their_input_contract(tmp_path):
    from model.checkpoint import read_checkpoint
    from model.contract import InputContract, resolve_contract

    torch.manual_seed(0)
    model = build_detr("detr-tiny", num_classes=4)
    contract = InputContract(min_size=160, max_size=267, image_mean=(0.5, 0.5, 0.5), image_std=(0.25, 0.25, 0.25))
    path = save_checkpoint(str(tmp_path / "a.pt"), model, contract=contract)
    loaded, _ = load_checkpoint(path)
    assert loaded.contract == contract and read_checkpoint(path)[2] == contract
    again = save_checkpoint(str(tmp_path / "b.pt"), loaded.eval())  # load + save keeps it
    assert read_checkpoint(again)[2] == contract

    # written before contracts: the config held mean / std; no contract, the paper's is stated
    payload = torch.load(path, weights_only=True)
    del payload["contract"]
    payload["config"].update(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    torch.save(payload, tmp_path / "old.pt")
    config, _, recorded = read_checkpoint(str(tmp_path / "old.pt"))
    assert recorded is None and config == loaded.config
    used, said = resolve_contract(recorded, "old.pt")
    assert used == InputContract() and len(said) == 1 and "old.pt records no input contract" in said[0]
    # a size given by the user wins, said in one line naming both
    used, said = resolve_contract(contract, "a.pt", min_size=200)
    assert (used.min_size, used.max_size, used.image_mean) == (200, 267, contract.image_mean)
    assert len(said) == 1 and "--min-size 200 (its own: 160)" in said[0]
    with pytest.raises(ValueError, match="min_size <= max_size, got 320 / 267"):
        resolve_contract(contract, "a.pt", min_size=320)
    assert resolve_contract(contract, "a.pt", min_size=160) == (contract, [])  # the same size: nothing to say
