"""Every listed transformers family behind the model interface: detections equal transformers'
own (image processor + model + post_process_object_detection) on the same decoded pixels, our
checkpoints of them round-trip, and bad folders stop in one line."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import decode_image

from model.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from model.families import FAMILIES, FamilyConfig
from model.interface import build_model, preset_config
from model.safe_load import CheckpointError
from pipeline.training.validation import detect_images
from tests.families import assert_same_detections, family_folder, hf_model, processor

SIZES = [(90, 120), (150, 61), (128, 128)]  # (height, width): landscape, portrait, square


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("family-images")
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate(SIZES):
        path = folder / f"{i}.jpg"
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(path, quality=95)
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_detections_equal_transformers(model_type, images, tmp_path):
    reference = family_folder(model_type, tmp_path)
    model, config = load_checkpoint(str(tmp_path))
    assert isinstance(config, FamilyConfig) and config.model_type == model_type
    table = detect_images(model, [{"path": p, "image_id": i} for i, p in enumerate(images)], model.contract,
                          batch_size=2, score_threshold=0.05)
    image_processor = processor(model_type)
    for i, path in enumerate(images):
        pixels = decode_image(path)
        # Shorter-side families: on the canvas detection pads the image to (model/contract.py), so
        # that an image's detections do not depend on its batch; fixed-size ones have no padding.
        canvas = model.contract.canvas_of(*pixels.shape[1:])
        padding = {} if model.contract.fixed_size else {"pad_size": {"height": canvas[0], "width": canvas[1]}}
        with torch.no_grad():
            outputs = reference(**image_processor(images=pixels, return_tensors="pt", **padding))
        kwargs = {"top_k": config.top_k} if model_type in ("deformable_detr", "conditional_detr", "rf_detr", "lw_detr") else {}
        expected = image_processor.post_process_object_detection(outputs, threshold=0.05,
                                                                  target_sizes=[pixels.shape[1:]], **kwargs)[0]
        found = {k: table[k][i].as_py() for k in ("scores", "labels", "boxes")}
        assert_same_detections(found, {k: v.tolist() for k, v in expected.items()})



def test_fixed_size_contract_from_the_processor(tmp_path):
    family_folder("rt_detr_v2", tmp_path)
    _, _, contract = read_checkpoint(str(tmp_path))
    assert contract.fixed_size == (128, 128) and contract.image_std == (1.0, 1.0, 1.0)
    assert contract.canvas_of(480, 640) == contract.canvas_of(30, 2000) == (128, 128)  # one canvas: full batches


def test_folder_without_processor_uses_the_family_default(tmp_path, caplog):
    family_folder("d_fine", tmp_path, with_processor=False)
    _, _, contract = read_checkpoint(str(tmp_path))
    assert contract == FAMILIES["d_fine"].contract
    assert "no preprocessor_config.json" in caplog.text


def test_our_checkpoint_of_a_family_round_trips(tmp_path):
    model = build_model(preset_config("rtdetr-tiny", num_classes=5)).eval()
    model.contract = None
    save_checkpoint(str(tmp_path / "run"), model)
    loaded, config = load_checkpoint(str(tmp_path / "run"))
    pixels = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        a, b = model(pixels), loaded(pixels)
    assert torch.equal(a["pred_logits"], b["pred_logits"]) and torch.equal(a["pred_boxes"], b["pred_boxes"])
    tuned, tuned_config = load_checkpoint(str(tmp_path / "run"), num_classes=9)  # another label set: new heads
    assert tuned_config.num_classes == 9 and tuned(pixels)["pred_logits"].shape[-1] == 9


def test_a_folder_never_runs_code(tmp_path):
    family_folder("rt_detr_v2", tmp_path)
    (tmp_path / "model.safetensors").unlink()

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"weight": Payload()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="refusing to load .*pytorch_model.bin"):
        read_checkpoint(str(tmp_path))
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "evil.Model"}}))
    with pytest.raises(CheckpointError, match="asks to run code"):
        read_checkpoint(str(tmp_path))


def test_unlisted_model_type_names_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "yolos"}))
    with pytest.raises(CheckpointError, match="'yolos' is not supported; the supported ones are detr, rt_detr"):
        read_checkpoint(str(tmp_path))


def test_rf_detr_size_not_divisible_by_its_windows(tmp_path):
    hf_model("rf_detr").save_pretrained(tmp_path)
    processor("rf_detr", {"height": 120, "width": 120}).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="120x120 is not divisible by 16"):
        read_checkpoint(str(tmp_path))


@pytest.mark.parametrize("model_type", ["rt_detr_v2", "d_fine"])
def test_loss_runs_in_float32_under_bf16_autocast(model_type):
    model = build_model(preset_config("rtdetr-tiny" if model_type == "rt_detr_v2" else "dfine-tiny", 4)).train()
    targets = [{"labels": torch.tensor([1, 2]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.6, 0.1, 0.2]])}]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(torch.rand(1, 3, 96, 96), None, targets)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())


def test_labels_named_otherwise_than_the_annotations_are_refused():
    from pipeline.evaluation.labels import check_label_names

    coco_style = [{"id": 1, "name": "person"}, {"id": 2, "name": "bicycle"}, {"id": 3, "name": "car"}]
    zero_based = {"config": {"family": "rt_detr_v2", "hf": {"id2label": {"0": "person", "1": "bicycle", "2": "car"}}}}
    with pytest.raises(ValueError, match="the model's labels are not these annotations' category ids"):
        check_label_names(zero_based, coco_style)
    same = {"config": {"family": "rt_detr_v2", "hf": {"id2label": {"1": "person", "2": "bicycle", "3": "car"}}}}
    check_label_names(same, coco_style)
    generic = {"config": {"family": "rt_detr_v2", "hf": {"id2label": {"0": "LABEL_0", "1": "LABEL_1"}}}}
    check_label_names(generic, coco_style)  # a model fine-tuned here names no classes
