"""Checkpoint export and import: our own files, the reference DETR release, Hugging Face folders.

Nothing is ever fully unpickled: .pt/.pth/.bin files load with torch.load(weights_only=True)
and .safetensors with safetensors, so a checkpoint from elsewhere cannot run code.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
from typing import Any, cast

import pyarrow.fs as pafs
import torch
from torch import nn

import storage as uris

from .contract import InputContract
from .families import FAMILIES, HUB_ID, FamilyConfig, unsupported
from .family_folders import from_hub, load_family, read_family
from .interface import ModelConfig, config_from_dict
from .network import DetectionNetwork
from .reference_files import read_huggingface, reference_config
from .safe_load import HF_WEIGHT_FILES, CheckpointError, refuse_remote_code, safe_torch_load  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

FORMAT = "detr-ray-checkpoint"
CHECKPOINT_FILE = "checkpoint.pt"
CLASS_HEADS = ("class_embed.", "query_selection.class_embed.")  # re-initialised for other label sets
SEGM_CLASS_HEADS = tuple(f"detr.{h}" for h in CLASS_HEADS)  # the same in a model with the mask head
MASK_HEAD = ("bbox_attention.", "mask_head.")


def save_checkpoint(
    target: str,
    model: nn.Module,
    config: ModelConfig | None = None,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    epoch: int | None = None,
    extra: dict[str, Any] | None = None,
    contract: InputContract | None = None,
) -> str:
    """Write weights + config + input contract (+ optimizer state, epoch, plain-data extras) and
    return the file URI.

    target: a file ending in .pt/.pth, or a directory (local or s3://) that receives
    checkpoint.pt. The file loads with torch.load(weights_only=True). contract: how images
    become the model's input (model/contract.py); default the model's own (model.contract,
    set by load_checkpoint), recorded unless neither is known.
    """
    network = cast(DetectionNetwork, getattr(model, "module", model))  # a DistributedDataParallel's unwrapped
    if network.inference_only:
        raise ValueError("this model was optimised for inference (folded weights): save the original model")
    config = config or network.config
    contract = contract or network.contract
    payload: dict[str, Any] = {"format": FORMAT, "version": 1, "config": config.to_dict(),
                               "model": network.state_dict()}
    if contract is not None:
        payload["contract"] = contract.to_dict()
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict()
    if epoch is not None:
        payload["epoch"] = int(epoch)
    if extra:
        payload["extra"] = extra
    path = target if target.endswith((".pt", ".pth")) else uris.join(target, CHECKPOINT_FILE)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    uris.write_bytes(path, buffer.getvalue())
    return path


def load_checkpoint(
    source: str,
    *,
    num_classes: int | None = None,
    dilation: bool | None = None,
    device: str | torch.device = "cpu",
    **config_overrides: Any,
) -> tuple[DetectionNetwork, ModelConfig]:
    """Build a DETR (a DETRsegm for a checkpoint with the mask head, a TransformersDetector for a
    transformers family's) from a checkpoint and return it (eval mode) with its config; the model's
    `contract` is the input contract the checkpoint records (None when it records none).

    source: a local path or URI of our checkpoint (file or directory), a reference release
    file (detr-r50-e632da11.pth and siblings), or a Hugging Face folder (config.json
    + model.safetensors or pytorch_model.bin) of DETR or of a family in model/families.py.
    num_classes: fine-tune to another label set; the class head is then re-initialised.
    dilation: DC5 for reference files (their shapes cannot tell; default: "dc5" in the name).
    config_overrides: other DetrConfig fields (e.g. nheads, dropout, aux_loss; masks=True on a box
    checkpoint adds a new mask head to it).
    """
    config, state_dict, contract = read_checkpoint(source, dilation=dilation)
    if isinstance(config, FamilyConfig):
        return load_family(source, config, state_dict, contract, num_classes, device, config_overrides)
    drop_head = num_classes is not None and num_classes != config.num_classes
    if drop_head:
        log.warning(
            "%s has %d classes, building %d: the class head is re-initialised",
            source, config.num_classes, num_classes,
        )
    config = config.replace(**config_overrides, **({"num_classes": num_classes} if drop_head else {}))
    new_mask_head = config.masks and not any(k.startswith("detr.") for k in state_dict)
    if new_mask_head:  # a box model given the mask head (masks=True): its weights under detr.
        log.warning("%s is a box model: a new mask head is added to it", source)
        state_dict = {f"detr.{k}": v for k, v in state_dict.items()}
    heads = SEGM_CLASS_HEADS if config.masks else CLASS_HEADS
    if drop_head:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(heads)}
    from .segmentation import build_detr  # the network's code (torchvision): not for reading a checkpoint

    model = build_detr(config)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict and not (drop_head and k.startswith(heads))
               and not (new_mask_head and k.startswith(MASK_HEAD))]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k} {tuple(v.shape)} != {tuple(expected[k].shape)}"
        for k, v in state_dict.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"{source} does not match {config}: missing keys {missing}, unexpected keys {unexpected}, "
            f"shape mismatches (checkpoint != model) {mismatched}"
        )
    model.load_state_dict(state_dict, strict=False)
    model.contract = contract
    return model.to(device).eval(), config


def read_checkpoint(
    source: str, dilation: bool | None = None
) -> tuple[ModelConfig, dict[str, torch.Tensor], InputContract | None]:
    """The config, reference-named state_dict (a family's: its TransformersDetector's) and recorded
    input contract of any supported checkpoint. The contract is None where the file records none: our checkpoints written
    before contracts were, reference .pth files and Hugging Face folders (all of which were
    trained with the paper's, model.contract.PAPER_CONTRACT)."""
    kind = uris.file_type(source)
    if kind == pafs.FileType.NotFound and HUB_ID.fullmatch(source):
        source, kind = from_hub(source), pafs.FileType.Directory
    if kind == pafs.FileType.NotFound:
        raise FileNotFoundError(f"no checkpoint at {source}")
    if kind == pafs.FileType.Directory:
        return _read_directory(source, dilation)
    payload = safe_torch_load(uris.read_bytes(source), source)
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        contract = InputContract.from_dict(payload["contract"]) if "contract" in payload else None
        return config_from_dict(payload["config"]), payload["model"], contract
    if isinstance(payload, dict) and isinstance(payload.get("model"), dict):
        return reference_config(payload["model"], payload.get("args"), source, dilation), payload["model"], None
    if isinstance(payload, dict) and any(k.startswith(("backbone.0.body.", "detr.backbone.0.body.")) for k in payload):
        return reference_config(payload, None, source, dilation), payload, None
    raise CheckpointError(f"{source} is not a DETR checkpoint (top-level keys: {_keys(payload)})")


def weights_id(state_dict: dict[str, torch.Tensor]) -> str:
    """A stable identifier of the weights: sha256 over names, dtypes, shapes and values."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def _keys(payload: Any) -> list[str]:
    return sorted(map(str, payload))[:10] if isinstance(payload, dict) else [type(payload).__name__]


def _read_directory(
    source: str, dilation: bool | None
) -> tuple[ModelConfig, dict[str, torch.Tensor], InputContract | None]:
    ours = uris.join(source, CHECKPOINT_FILE)
    if uris.file_type(ours) == pafs.FileType.File:
        return read_checkpoint(ours, dilation)
    if uris.file_type(uris.join(source, "config.json")) == pafs.FileType.File:
        hf = json.loads(uris.read_bytes(uris.join(source, "config.json")))
        refuse_remote_code(hf, source)
        if hf.get("model_type") in FAMILIES:
            return read_family(source, hf)
        if hf.get("model_type") != "detr":
            raise CheckpointError(unsupported(hf.get("model_type"), f"{source}/config.json"))
        return read_huggingface(source)
    raise CheckpointError(
        f"{source} is a directory with neither {CHECKPOINT_FILE} (ours) nor config.json (Hugging Face)"
    )


def check_source(source: str, masks: bool | None = None) -> None:
    """A cheap look at a checkpoint before a run starts (no weights read): it exists, is a file
    or folder the loader reads, of a supported model type, and asks to run no code; a
    transformers folder, that it can train with masks (True) or without (False) as asked.
    One-line errors (CheckpointError, FileNotFoundError)."""
    kind = uris.file_type(source)
    if kind == pafs.FileType.NotFound:
        if HUB_ID.fullmatch(source):
            return  # a hub id: read when the run loads it
        raise FileNotFoundError(f"no checkpoint at {source}")
    if kind == pafs.FileType.File:
        if not source.endswith((".pt", ".pth", ".bin")):
            raise CheckpointError(f"{source}: checkpoints are .pt / .pth files or folders (an exported .onnx or .pt2 "
                                  "graph runs detection only)")
        return
    if uris.file_type(uris.join(source, CHECKPOINT_FILE)) == pafs.FileType.File:
        return
    config_uri = uris.join(source, "config.json")
    if uris.file_type(config_uri) != pafs.FileType.File:
        raise CheckpointError(f"{source} is a directory with neither {CHECKPOINT_FILE} (ours) nor config.json "
                              "(Hugging Face)")
    hf = json.loads(uris.read_bytes(config_uri))
    refuse_remote_code(hf, source)
    if hf.get("model_type") not in ("detr", *FAMILIES):
        raise CheckpointError(unsupported(hf.get("model_type"), f"{source}/config.json"))
    segmentation = FAMILIES[hf["model_type"]].segmentation_class if hf["model_type"] in FAMILIES else None
    if masks and hf["model_type"] in FAMILIES and segmentation is None:
        raise CheckpointError(f"{source} is a {hf['model_type']} model, which has no mask head (--masks): "
                              "instance masks are DETR's and rf_detr's")
    if masks is False and segmentation in hf.get("architectures", ()):
        raise CheckpointError(f"{source} is {segmentation}: train it with --masks (its mask terms need the "
                              "annotations' segmentations)")
