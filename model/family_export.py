"""ONNX of a transformers family's model (RT-DETR, D-FINE, DEIMv2, RF-DETR, LW-DETR), verified.

Three things stand between these models and an honest graph, all in transformers' code:
- a `torch._check` lowers to `aten._is_all_true`, which the ONNX exporter has no function for:
  it gets one here (all elements true: the minimum of the tensor as integers), so the query
  selection (the encoder's top-k) is exported as the computation it is. The TorchScript
  exporter instead traces it as constants: its graph runs and is wrong on any other input;
- the encoder's anchors, made in the graph with in-place writes to slices, come out of the ONNX
  translation wrong (boxes off by up to 0.9): the model is built with `anchor_image_size`, the
  contract's fixed size, so that they are made once, eagerly, and enter the graph as constants;
- `batch_size = len(features)` fixes the batch at export time: the graph has a static batch
  (the export's batch size, detection's default 8). OnnxDetr pads a smaller batch with empty
  images up to it and splits a larger one, so detection runs any batch through it.
The graph takes `images` alone: these families' contracts resize every image to one fixed size,
so there is no padding and no mask. The verification runs several different inputs at several
batch sizes through OnnxDetr, as detection does, against PyTorch, comparing each image's queries
as a set: where the encoder scores two proposals exactly alike, the order of the queries they
become is the runtime's choice (the detections, made from the set, are the same).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .contract import InputContract
from .export_formats import TOLERANCE, ExportError
from .families import FamilyConfig, processor_of_contract
from .onnx_model import OUTPUTS, OnnxDetr


class FamilyGraph(nn.Module):
    """A family's model as deployed: images -> (pred_logits, pred_boxes)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.outputs = OUTPUTS

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(images, None)
        return tuple(out[name].float() for name in self.outputs)


def check_exportable(config: FamilyConfig, contract: InputContract) -> None:
    if config.masks:
        raise ExportError(f"ONNX export of {config.model_type}'s instance segmentation model is not supported (its "
                          "graph would have boxes only); --output FOLDER writes it as a transformers folder")
    if contract.fixed_size is None:
        raise ExportError(f"ONNX export of {config.model_type} is not supported: its images keep their aspect "
                          "(padded, with a mask), and transformers' code fixes the shapes at export; the fixed-size "
                          "families (rt_detr, rt_detr_v2, d_fine, deimv2, rf_detr, lw_detr) export")


def anchored(config: FamilyConfig, contract: InputContract) -> FamilyConfig:
    """The config with the encoder's anchors made for the contract's size (the families that
    have them: RT-DETR, D-FINE, DEIMv2); the weights are the same."""
    if "anchor_image_size" not in config.hf or contract.fixed_size is None:
        return config
    return config.replace(anchor_image_size=list(contract.fixed_size))


def _is_all_true(x: Any) -> Any:
    import onnx
    from onnxscript import opset18 as op

    as_int: Any = op.Cast(x, to=onnx.TensorProto.INT32)  # onnxscript's types cannot follow `to`
    smallest: Any = op.ReduceMin(as_int, keepdims=0)
    return op.Cast(smallest, to=onnx.TensorProto.BOOL)


def export_family_onnx(model: nn.Module, contract: InputContract, path: str, opset: int, batch: int) -> FamilyGraph:
    """Write the graph of a family's model to a local path; returns the module it was made from."""
    graph = FamilyGraph(model.eval()).eval()
    images = sample_images(batch, contract, seed=0)
    program = torch.onnx.export(graph, (images,), dynamo=True, opset_version=opset, input_names=["images"],
                                output_names=list(graph.outputs), verbose=False,
                                custom_translation_table={torch.ops.aten._is_all_true.default: _is_all_true})
    assert program is not None  # dynamo=True returns the program
    program.save(path)
    return graph


def sample_images(batch: int, contract: InputContract, seed: int) -> torch.Tensor:
    """Normalised images of the contract's fixed size: uniform pixels through its mean / std."""
    if contract.fixed_size is None:
        raise ValueError("sample_images: a fixed-size contract's images")
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.rand(batch, 3, *contract.fixed_size, generator=generator)
    mean = torch.tensor(contract.image_mean).view(3, 1, 1)
    std = torch.tensor(contract.image_std).view(3, 1, 1)
    return (pixels - mean) / std


def verify_family(graph: FamilyGraph, path: str, contract: InputContract, batch: int) -> dict[str, float]:
    """Largest |ONNX Runtime - PyTorch| of each output at batches of 1, the graph's batch, one
    below and one above it (padded and split by OnnxDetr), each on other images; ExportError
    above TOLERANCE."""
    run = OnnxDetr(Path(path).read_bytes())
    worst = {name: 0.0 for name in graph.outputs}
    for size in sorted({1, max(1, batch - 1), batch, batch + 1}):
        images = sample_images(size, contract, seed=size)
        with torch.no_grad():
            expected = graph(images)
        got = run(images, None)
        differences = paired_differences(expected, tuple(got[n] for n in graph.outputs))
        for name, difference in zip(graph.outputs, differences):
            worst[name] = max(worst[name], difference)
            if not difference <= TOLERANCE:  # NaN fails too
                raise ExportError(f"the exported model differs from the PyTorch model: {name} max |difference| "
                                  f"{difference:.3g} on a batch of {size} (tolerance {TOLERANCE})")
    return worst


def paired_differences(expected: tuple[torch.Tensor, ...], got: tuple[torch.Tensor, ...]) -> list[float]:
    """The largest |difference| of each output ([B, queries, ...] each) with each image's queries
    paired one to one (scipy's assignment, by their largest difference over every output): the
    two runtimes may order queries the encoder scored alike differently, and a sort by rounded
    values can still part two near-equal queries at a rounding boundary."""
    from scipy.optimize import linear_sum_assignment

    worst = [0.0] * len(expected)
    for image in range(expected[0].shape[0]):
        a = [e[image].flatten(1).double() for e in expected]
        b = [g[image].flatten(1).double() for g in got]
        if not all(bool(t.isfinite().all()) for t in a + b):
            return [float("nan")] * len(expected)  # fails any tolerance
        cost = torch.stack([(x[:, None] - y[None]).abs().amax(-1) for x, y in zip(a, b)]).amax(0)
        rows, cols = linear_sum_assignment(cost.cpu().numpy())
        for k, (x, y) in enumerate(zip(a, b)):
            worst[k] = max(worst[k], float((x[rows] - y[cols]).abs().max()))
    return worst


def save_folder(config: FamilyConfig, state_dict: dict[str, torch.Tensor], contract: InputContract | None,
                output: str) -> dict[str, Any]:
    """A transformers folder of a family's model (local or s3://): config.json and model.safetensors
    as save_pretrained writes them, and the preprocessor_config.json of its input contract, so that
    transformers' own pipeline, and this project's jobs, run it as it was trained."""
    import json
    import os
    import tempfile

    import storage as uris

    from .transformers_detector import TransformersDetector

    model = TransformersDetector(config)
    model.load_state_dict(state_dict)
    contract = contract or config.family.contract
    written = []
    with tempfile.TemporaryDirectory() as folder:
        model.model.save_pretrained(folder)
        with open(os.path.join(folder, "preprocessor_config.json"), "w") as f:
            json.dump(processor_of_contract(config.family, contract), f, indent=2)
        for name in sorted(os.listdir(folder)):
            with open(os.path.join(folder, name), "rb") as f:
                uris.write_bytes(uris.join(output, name), f.read())
            written.append(name)
    return {"output": output, "format": "transformers folder", "files": written, "contract": contract.to_dict()}
