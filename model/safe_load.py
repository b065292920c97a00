"""Loading that never runs code from a file: torch.load restricted to tensors and plain data,
safetensors, and folders whose config does not ask for code of its own. A checkpoint from elsewhere
cannot run code (model/checkpoint.py, model/family_folders.py)."""
from __future__ import annotations

import argparse
import io
import pickle
from typing import Any

import torch

HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # a Hugging Face folder's weights


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: unsafe, unrecognised or not matching the model."""


def safe_torch_load(data: bytes, name: str) -> Any:
    """torch.load restricted to tensors and plain data (plus argparse.Namespace, which the
    reference training script stores and which cannot run code)."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"refusing to load {name}: it holds objects other than tensors and plain data, and "
            f"unpickling them could run code ({reason}). Re-save just its state_dict, or use safetensors."
        ) from e


def refuse_remote_code(hf: dict[str, Any], source: str) -> None:
    """A folder whose config asks for code of its own (auto_map: trust_remote_code) is refused:
    loading a folder never runs code from it."""
    if hf.get("auto_map"):
        raise CheckpointError(f"refusing {source}: its config.json asks to run code of its own (auto_map "
                              f"{sorted(hf['auto_map'])}); only transformers' own model classes are loaded")
