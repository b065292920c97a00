"""A DETR exported to ONNX (model/export.py), run with ONNX Runtime as the PyTorch model is run.

The graph's inputs are `images` (float32 [B,3,H,W], normalised) and `mask` (bool [B,H,W],
True on padding); its outputs `pred_logits` and `pred_boxes`. Its metadata carries what a
consumer needs besides: the DetrConfig (mean, std, queries, classes), the weights id of the
checkpoint it came from, the resize rule and the class names.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

import storage as uris

from .contract import InputContract

INPUTS = ("images", "mask")
OUTPUTS = ("pred_logits", "pred_boxes")
MASK_OUTPUT = "pred_masks"  # a graph of a model with the mask head has it too
INSTALL_HINT = "pip install -e '.[export]' (onnx and onnxruntime)"


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as e:
        raise ImportError(f"running an ONNX graph needs onnxruntime: {INSTALL_HINT}") from e
    return onnxruntime


def onnx_metadata(graph: bytes) -> dict[str, Any]:
    """The graph's metadata, JSON values decoded."""
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # only the metadata is read
    session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    return {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}


def read_onnx(source: str) -> tuple[Any, bytes, str, InputContract | None]:
    """(config, graph bytes, weights id, input contract) of an exported graph (local or s3://).
    Graphs exported before contracts were recorded carry its sizes and mean / std in their
    `preprocessing` entry; the rest of the contract is then the default."""
    graph = uris.read_bytes(source)
    import_onnxruntime()  # a missing onnxruntime says how to install it, not that the file is bad
    try:
        metadata = onnx_metadata(graph)
    except Exception as e:
        raise ValueError(f"{source} is not a loadable ONNX graph: {e}") from e
    if "config" not in metadata or "weights" not in metadata:
        raise ValueError(f"{source} was not exported by this project (its metadata lacks config and weights)")
    contract = metadata.get("contract")
    if contract is None and "preprocessing" in metadata:  # exported before contracts: its sizes, mean / std
        contract = {k: metadata["preprocessing"][k] for k in ("min_size", "max_size", "image_mean", "image_std")
                    if k in metadata["preprocessing"]}
    from .interface import config_from_dict

    return (config_from_dict(metadata["config"]), graph, metadata["weights"],
            InputContract.from_dict(contract) if contract else None)


class OnnxDetr:
    """Callable like DETR on a padded batch: (images, mask) -> {"pred_logits", "pred_boxes"} (and
    "pred_masks" from a graph with the mask head)."""

    def __init__(self, graph: bytes, device: str = "cpu", threads: int = 0):
        ort = import_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: ONNX Runtime's default (all cores)
        # Batches come in several canvas shapes, and the memory pattern plans (and holds) memory per
        # shape: without it detr-r50 at 800x1088 needs 1.4 GiB at batch 2 instead of 1.7, at the same
        # speed (docs/export.md). The arena stays: without it the same batches take 1.4-1.9x longer.
        options.enable_mem_pattern = False
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeError("this onnxruntime has no CUDA execution provider: install onnxruntime-gpu")
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(graph, options, providers=providers)
        self.providers = self.session.get_providers()
        self.outputs = [output.name for output in self.session.get_outputs()]
        self.inputs = [i.name for i in self.session.get_inputs()]  # a fixed-size family's graph: images alone
        batch = self.session.get_inputs()[0].shape[0]
        self.batch = batch if isinstance(batch, int) else None  # a family's graph has a static batch

    def __call__(self, images: torch.Tensor, mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
        if self.batch is None or len(images) == self.batch:
            return self._run(images, mask)
        parts = [self._run_padded(images[k:k + self.batch]) for k in range(0, len(images), self.batch)]
        return {name: torch.cat([p[name] for p in parts]) for name in self.outputs}

    def _run_padded(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Up to the static batch with empty images, whose outputs are dropped."""
        assert self.batch is not None  # only a static-batch graph pads
        count = len(images)
        padding = images.new_zeros((self.batch - count, *images.shape[1:]))
        return {k: v[:count] for k, v in self._run(torch.cat([images, padding]), None).items()}

    def _run(self, images: torch.Tensor, mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
        feed = {"images": np.ascontiguousarray(images.detach().float().cpu().numpy())}
        if "mask" in self.inputs and mask is not None:
            feed["mask"] = np.ascontiguousarray(mask.detach().cpu().numpy())
        results = self.session.run(self.outputs, feed)
        return {name: torch.from_numpy(result).to(images.device) for name, result in zip(self.outputs, results)}
