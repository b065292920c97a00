"""What both exporters share (export.py for DETR, family_export.py for transformers' families):
the formats written, the tolerance of their verification, the lowest ONNX opset and their error.
The export job checks a request against it before it loads a model."""
from __future__ import annotations

SUFFIXES = (".onnx", ".pt2")
FOLDER = "a folder"  # an output without a suffix: a transformers folder of a family's model


def output_format(output: str) -> str:
    """".onnx", ".pt2", or FOLDER (no suffix); an ExportError for any other suffix."""
    name = output.rstrip("/").rsplit("/", 1)[-1]
    if "." not in name:
        return FOLDER
    suffix = "." + name.rsplit(".", 1)[-1]
    if suffix not in SUFFIXES:
        raise ExportError(f"{output}: unknown format {suffix}; the output must end in .onnx or .pt2, or be a folder "
                          "(a transformers folder of an RT-DETR, D-FINE, ... model)")
    return suffix
TOLERANCE = 1e-4  # an export's largest |exported - PyTorch| on any output (CPU, float32)
DEFAULT_OPSET = 18  # the lowest the torch.export-based ONNX exporter writes


class ExportError(ValueError):
    """An export that failed or did not reproduce the model; nothing was written."""
