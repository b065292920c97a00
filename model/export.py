"""Take a trained DETR out of PyTorch: an ONNX graph (.onnx) or a torch.export program (.pt2).

Both take `images` (float32 [B,3,H,W], normalised with the config's mean and std) and `mask`
(bool [B,H,W], True on padding) and return `pred_logits` [B,Q,classes+1] and `pred_boxes`
[B,Q,4] (cx, cy, w, h relative to each image's unpadded area), and with the mask head
`pred_masks` [B,Q,h,w] (mask logits); batch, height and width are dynamic. What a consumer needs besides (config, input contract: mean, std, resize and canvas
rule; class names, weights id) is in the file: ONNX metadata, or `detr.json` among the .pt2 archive's extra files.

An export verifies itself before it is written: the exported file is run (ONNX Runtime on
CPU, or the program reloaded in PyTorch) on several batch sizes and image sizes, padding
included, and compared with the PyTorch model; a difference above the tolerance is an
ExportError with the numbers, and no file is left behind.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

import storage as uris

from .checkpoint import read_checkpoint, weights_id
from .contract import InputContract, resolve_contract
from .detr import DETR
from .export_formats import DEFAULT_OPSET, FOLDER, SUFFIXES, TOLERANCE, ExportError, output_format
from .families import FamilyConfig
from .family_export import anchored, check_exportable, export_family_onnx, save_folder, verify_family
from .interface import build_model
from .onnx_model import INPUTS, INSTALL_HINT, MASK_OUTPUT, OUTPUTS, OnnxDetr
from .segmentation import DETRsegm, build_detr

FAMILY_BATCH = 8  # a family graph's static batch (transformers' code fixes it): detection's default

# (batch, height, width, padded): batches the verification runs, padded ones with an image
# smaller than the batch in each direction.
VERIFY_CASES = ((1, 224, 288, False), (2, 320, 256, True), (3, 256, 384, True))



class DetectionGraph(nn.Module):
    """DETR with the outputs a deployment uses (no auxiliary or encoder outputs): logits and
    boxes, and the mask logits of a model with the mask head."""

    def __init__(self, model: DETR | DETRsegm):
        super().__init__()
        self.model = model
        self.outputs = OUTPUTS + ((MASK_OUTPUT,) if model.config.masks else ())

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(images, mask)
        return tuple(out[name].float() for name in self.outputs)


def sample_batch(batch: int, height: int, width: int, padded: bool, seed: int = 0
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised-looking images, zero on padding, as the detection pipeline pads them."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, height, width, generator=generator)
    mask = torch.zeros(batch, height, width, dtype=torch.bool)
    if padded:
        mask[0, :, width - width // 3:] = True
        mask[-1, height - height // 4:, :] = True
    return images.masked_fill(mask[:, None], 0.0), mask


def export(model: DETR | DETRsegm, output: str, metadata: dict[str, Any], opset: int = DEFAULT_OPSET) -> dict[str, Any]:
    """Export, verify, then write output (local or s3://); returns what was measured."""
    suffix = Path(output).suffix
    if suffix not in SUFFIXES:
        raise ExportError(f"{output}: unknown format {suffix or '(no suffix)'}; use .onnx or .pt2")
    graph = DetectionGraph(model.eval()).eval()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        local = os.path.join(folder, "model" + suffix)
        if suffix == ".onnx":
            _export_onnx(graph, local, metadata, opset)
        else:
            _export_program(graph, local, metadata)
        export_seconds = time.perf_counter() - started
        differences = verify(graph, local)
        data = Path(local).read_bytes()
    uris.write_bytes(output, data)
    return {"output": output, "format": suffix[1:], "bytes": len(data), "export_seconds": round(export_seconds, 1),
            "max_abs_difference": differences, "tolerance": TOLERANCE}


def _dynamic_shapes() -> dict[str, dict[int, Any]]:
    batch = torch.export.Dim("batch", min=1, max=1024)
    height, width = torch.export.Dim("height", min=32, max=8192), torch.export.Dim("width", min=32, max=8192)
    return {"images": {0: batch, 2: height, 3: width}, "mask": {0: batch, 1: height, 2: width}}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters' deprecation warnings and optimiser notes say nothing to a user of the file."""
    loggers = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def _export_onnx(graph: DetectionGraph, path: str, metadata: dict[str, Any], opset: int) -> None:
    try:
        import onnx  # noqa: F401  (checked here for a clear message)
        import onnxscript  # noqa: F401  (the exporter's dependency, checked here for a clear message)
    except ImportError as e:
        raise ImportError(f"ONNX export needs onnx, onnxscript and onnxruntime: {INSTALL_HINT}") from e
    with _quiet():
        program = torch.onnx.export(graph, sample_batch(2, 256, 320, True), dynamo=True, opset_version=opset,
                                    input_names=list(INPUTS), output_names=list(graph.outputs),
                                    dynamic_shapes=_dynamic_shapes(), verbose=False)
        assert program is not None  # dynamo=True returns the program
        program.save(path)
    _add_metadata(path, metadata)


def _add_metadata(path: str, metadata: dict[str, Any]) -> None:
    import onnx

    proto = onnx.load(path)
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=json.dumps(value, sort_keys=True))
    onnx.save(proto, path)


def _export_program(graph: DetectionGraph, path: str, metadata: dict[str, Any]) -> None:
    with _quiet():
        program = torch.export.export(graph, sample_batch(2, 256, 320, True), dynamic_shapes=_dynamic_shapes())
    torch.export.save(program, path, extra_files={"detr.json": json.dumps(metadata, sort_keys=True)})


def verify(graph: DetectionGraph, path: str) -> dict[str, float]:
    """Largest |exported - PyTorch| of each output over VERIFY_CASES; ExportError above TOLERANCE."""
    if path.endswith(".onnx"):
        run = OnnxDetr(Path(path).read_bytes())
        exported = lambda images, mask: tuple(run(images, mask)[k] for k in graph.outputs)  # noqa: E731
    else:
        exported = torch.export.load(path).module()  # our own file, just written: safe to unpickle
    worst = {name: 0.0 for name in graph.outputs}
    for batch, height, width, padded in VERIFY_CASES:
        images, mask = sample_batch(batch, height, width, padded, seed=batch)
        with torch.no_grad():
            expected, got = graph(images, mask), exported(images, mask)
        for name, a, b in zip(graph.outputs, expected, got):
            difference = float((a - b).abs().max())
            worst[name] = max(worst[name], difference)
            if not difference <= TOLERANCE:  # NaN fails too
                hint = ("; a two-stage model picks its queries by score, and where scores lie within rounding "
                        "of each other (an untrained model) runtimes can pick differently"
                        if graph.model.config.two_stage else "")
                raise ExportError(f"the exported model differs from the PyTorch model: {name} max |difference| "
                                  f"{difference:.3g} on a batch of {batch} at {height}x{width}"
                                  f"{' with padding' if padded else ''} (tolerance {TOLERANCE}){hint}")
    return worst


def export_checkpoint(checkpoint: str, output: str, *, opset: int = DEFAULT_OPSET,
                      class_names: dict[int, str] | None = None, min_size: int | None = None,
                      max_size: int | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Export any checkpoint load_checkpoint reads (ours, a reference .pth, a Hugging Face
    folder) with its input contract (sizes given here override its own, said through `log`);
    returns export()'s report and the weights id."""
    config, state_dict, recorded = read_checkpoint(checkpoint)
    contract, said = resolve_contract(recorded, uris.strip_credentials(checkpoint), min_size, max_size)
    for line in said:
        log(line)
    weights = weights_id(state_dict)
    if output_format(output) == FOLDER:
        if not isinstance(config, FamilyConfig):
            raise ExportError(f"{output}: a folder is written for a transformers family's model; a DETR checkpoint "
                              "exports to .onnx or .pt2")
        return {**save_folder(config, state_dict, contract, output), "weights": weights}
    if isinstance(config, FamilyConfig):
        return {**export_family(config, state_dict, contract, output, weights, uris.strip_credentials(checkpoint),
                                class_names, opset), "weights": weights, "contract": contract.to_dict()}
    model = build_detr(config)  # with the mask head when the checkpoint has one: pred_masks is an output
    model.load_state_dict(state_dict)
    metadata = {
        "weights": weights,
        "checkpoint": uris.strip_credentials(checkpoint),
        "config": config.to_dict(),
        "num_classes": config.num_classes,
        "class_names": {str(k): v for k, v in sorted((class_names or {}).items())},
        "contract": contract.to_dict(),
        "preprocessing": {
            "image_mean": list(contract.image_mean), "image_std": list(contract.image_std),
            "pixels": "RGB scaled to [0, 1], then (x - mean) / std",
            "min_size": contract.min_size, "max_size": contract.max_size,
            "resize": "shorter side to min_size, longer side at most max_size, aspect kept",
            "padding": f"zeros at the bottom / right of each image onto its canvas (sides rounded up to "
                       f"{contract.stride}; `contract` and model/contract.py give the rule); mask true there",
        },
        "outputs": {
            "pred_logits": "[B, queries, num_classes + 1]; softmax, the last class is no-object",
            "pred_boxes": "[B, queries, 4] cx, cy, w, h in [0, 1] of the unpadded image",
        },
    }
    return {**export(model, output, metadata, opset), "weights": weights, "contract": contract.to_dict()}


def export_family(config: FamilyConfig, state_dict: dict[str, torch.Tensor], contract: InputContract, output: str,
                  weights: str, checkpoint: str, class_names: dict[int, str] | None, opset: int) -> dict[str, Any]:
    """A transformers family's ONNX graph (model/family_export.py), verified, then written."""
    check_exportable(config, contract)
    assert contract.fixed_size is not None  # checked: only the fixed-size families export
    if not output.endswith(".onnx"):
        raise ExportError(f"{output}: a {config.model_type} model exports to ONNX (.onnx), not a torch.export program")
    model = build_model(anchored(config, contract))
    model.load_state_dict(state_dict)
    metadata = {
        "weights": weights, "checkpoint": checkpoint, "config": config.to_dict(), "num_classes": config.num_classes,
        "class_names": {str(k): v for k, v in sorted((class_names or {}).items())},
        "contract": contract.to_dict(),
        "preprocessing": {
            "image_mean": list(contract.image_mean), "image_std": list(contract.image_std),
            "pixels": "RGB scaled to [0, 1], then (x - mean) / std",
            "resize": f"to {contract.fixed_size[0]}x{contract.fixed_size[1]} (height x width), aspect not kept, "
                      + ("antialiased bilinear on 8-bit pixels" if contract.antialias else
                         "bilinear on [0, 1] pixels without antialiasing"),
            "batch": f"static, {FAMILY_BATCH} images: pad a smaller batch with any images and drop their outputs",
        },
        "outputs": {
            "pred_logits": "[B, queries, num_classes]; sigmoid per class, the top (query, class) pairs are kept",
            "pred_boxes": "[B, queries, 4] cx, cy, w, h in [0, 1] of the image",
        },
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        local = os.path.join(folder, "model.onnx")
        with _quiet():
            graph = export_family_onnx(model, contract, local, opset, FAMILY_BATCH)
        _add_metadata(local, metadata)
        export_seconds = time.perf_counter() - started
        differences = verify_family(graph, local, contract, FAMILY_BATCH)
        data = Path(local).read_bytes()
    uris.write_bytes(output, data)
    return {"output": output, "format": "onnx", "bytes": len(data), "export_seconds": round(export_seconds, 1),
            "max_abs_difference": differences, "tolerance": TOLERANCE, "batch": FAMILY_BATCH}
