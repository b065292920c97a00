"""transformers folders of the DETR family (model/families.py): read from a local path, s3:// or
the hub, with their input contract, and built as a TransformersDetector with a checkpoint's weights
(model/checkpoint.py reads and loads every kind of checkpoint through these)."""
from __future__ import annotations

import json
import logging
import tempfile
from typing import Any

import pyarrow.fs as pafs
import torch

import storage as uris

from .contract import InputContract
from .families import FAMILIES, FamilyConfig, check_window, contract_of_processor
from .safe_load import HF_WEIGHT_FILES, CheckpointError, safe_torch_load
from .transformers_detector import TransformersDetector, family_config, quiet_transformers

log = logging.getLogger(__name__)

HUB_FILES = ["config.json", "preprocessor_config.json", *HF_WEIGHT_FILES]  # never code


def from_hub(repo_id: str) -> str:
    """A hub model's config, processor settings and weights (nothing else), in the local cache."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, allow_patterns=HUB_FILES)
    except Exception as e:  # offline, unknown repository, refused
        raise FileNotFoundError(f"no checkpoint at {repo_id}: not a local path, and the hub gave no model "
                                f"of that id ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def read_family(source: str, hf: dict[str, Any]) -> tuple[FamilyConfig, dict[str, torch.Tensor], InputContract]:
    """A transformers folder of a listed family: its weights through transformers' own loading
    (which renames checkpoints of older versions), from a local copy holding the config and
    weights only, so that nothing in the folder can run; a .bin is checked with weights_only
    loading first."""
    quiet_transformers()
    family = FAMILIES[hf["model_type"]]
    processor_uri = uris.join(source, "preprocessor_config.json")
    processor = (json.loads(uris.read_bytes(processor_uri))
                 if uris.file_type(processor_uri) == pafs.FileType.File else None)
    try:
        contract, said = contract_of_processor(processor, family, source)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    for line in said:
        log.warning("%s", line)
    weights = next((n for n in HF_WEIGHT_FILES if uris.file_type(uris.join(source, n)) == pafs.FileType.File), None)
    if weights is None:
        raise CheckpointError(f"{source} has config.json but none of {HF_WEIGHT_FILES}")
    data = uris.read_bytes(uris.join(source, weights))
    if weights.endswith(".bin"):
        safe_torch_load(data, uris.join(source, weights))
    import transformers

    # An instance segmentation folder (RF-DETR's) says so in its architectures, as transformers writes them
    masks = family.segmentation_class is not None and family.segmentation_class in hf.get("architectures", ())
    with tempfile.TemporaryDirectory() as folder:
        with open(f"{folder}/config.json", "w") as f:
            json.dump(hf, f)
        with open(f"{folder}/{weights}", "wb") as f:
            f.write(data)
        model_class = family.segmentation_class if masks and family.segmentation_class else family.detection_class
        hf_model = getattr(transformers, model_class).from_pretrained(folder, trust_remote_code=False,
                                                                      local_files_only=True)
    config = family_config(hf_model.config, masks)
    try:
        check_window(config, contract, source)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    return config, TransformersDetector(config, hf_model).state_dict(), contract


def load_family(source: str, config: FamilyConfig, state_dict: dict[str, torch.Tensor],
                 contract: InputContract | None, num_classes: int | None, device: str | torch.device,
                 overrides: dict[str, Any]) -> tuple[TransformersDetector, FamilyConfig]:
    """A family's TransformersDetector with the checkpoint's weights; with another num_classes,
    its class heads (the only weights whose shapes depend on it) are new; with masks=True on a
    box model, so is its mask head."""
    new_mask_head = bool(overrides.pop("masks", False)) and not config.masks
    if new_mask_head:
        if config.family.segmentation_class is None:
            raise CheckpointError(f"{source} is a {config.model_type} model, which has no mask head (--masks): "
                                  "instance masks are DETR's and rf_detr's")
        log.warning("%s is a box model: a new mask head is added to it", source)
        # transformers' segmentation model holds the box model as its `model`
        state_dict = {f"model.{k}": v for k, v in state_dict.items()}
        config = config.replace(masks=True)
    overrides.pop("stuff_classes", None)  # panoptic output is DETR's; a family detects stuff as boxes
    drop_head = num_classes is not None and num_classes != config.num_classes
    if drop_head:
        log.warning("%s has %d classes, building %d: the class heads are re-initialised",
                    source, config.num_classes, num_classes)
        overrides = {**overrides, "num_labels": num_classes}
    config = config.replace(**overrides) if overrides else config
    model = TransformersDetector(config)
    expected = model.state_dict()
    mismatched = {k for k, v in state_dict.items() if k in expected and v.shape != expected[k].shape}
    heads = mismatched if drop_head else set()  # the only weights whose shapes num_classes changes
    new = {k for k in expected if not k.startswith("model.model.")} if new_mask_head else set()
    missing = [k for k in expected if k not in state_dict and k not in heads | new]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected or mismatched - heads:
        raise CheckpointError(f"{source} does not match {config.describe()}: missing keys {missing[:10]}, unexpected "
                              f"keys {unexpected[:10]}, shape mismatches {sorted(mismatched - heads)[:10]}")
    model.load_state_dict({k: v for k, v in state_dict.items() if k not in heads}, strict=False)
    model.contract = contract
    return model.to(device).eval(), config
