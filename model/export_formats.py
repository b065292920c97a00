"""What the exporter writes, without torch: its formats, its lowest ONNX opset and its error, so
that the export job refuses a bad request before it loads the model (model/export.py)."""
from __future__ import annotations

SUFFIXES = (".onnx", ".pt2")
DEFAULT_OPSET = 18  # the lowest the torch.export-based ONNX exporter writes


class ExportError(ValueError):
    """An export that failed or did not reproduce the model; nothing was written."""
