"""Export a checkpoint to ONNX or a torch.export program, verified before it is written.

    python jobs/export.py --checkpoint CK --output model.onnx [--opset 18] [--annotations val.json]
    python jobs/export.py --checkpoint CK --output model.pt2

CK is any checkpoint the project loads (ours, a reference .pth, a Hugging Face folder; local
or s3://). The graph takes `images` (float32 B x 3 x H x W, normalised) and `mask` (bool
B x H x W, true on padding) and returns `pred_logits` and `pred_boxes` (and `pred_masks` for a
checkpoint with the mask head), with batch, height and width dynamic; its metadata holds the config, the input contract (mean / std, resize and
canvas rule: the checkpoint's own unless --min-size / --max-size say otherwise), class names
(from --annotations) and the weights id. The exported file is run on several batch and image sizes,
padding included, and compared with the PyTorch model (<= 1e-4 absolute) before it is
written. Ends with one JSON line; a failure is one `export: ...` line, exit code 1, and no
file. `jobs/detect.py --checkpoint model.onnx` runs the graph with ONNX Runtime.

A transformers family's model (RT-DETR, D-FINE, ...: docs/families.md) exports to ONNX with
`images` alone and a static batch of 8 (the fixed-size families), or, with an --output that has
no suffix, to a transformers folder (config.json, model.safetensors, preprocessor_config.json)
that transformers and these jobs load as it is:

    python jobs/export.py --checkpoint runs/rtdetr/best/checkpoint.pt --output rtdetr-folder
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout or a working dir

from model.export_formats import DEFAULT_OPSET, output_format  # noqa: E402
from pipeline import options  # noqa: E402
from pipeline.coco import load_coco  # noqa: E402
from pipeline.detection.config import DetectConfig  # noqa: E402
from pipeline.options import at_least, option, shared  # noqa: E402


@dataclass(frozen=True)
class ExportConfig:
    """The options of this job (pipeline/options.py); --min-size and --max-size are detection's."""
    checkpoint: str = option(path=True, help="our checkpoint, a reference .pth or a Hugging Face folder")
    output: str = option(path=True, help="a .onnx or .pt2 file, or a folder for a transformers family's model "
                         "(config.json, model.safetensors, preprocessor_config.json); a path or s3://")
    opset: int = option(DEFAULT_OPSET, check=at_least(DEFAULT_OPSET), help="ONNX opset")
    annotations: str | None = option(None, path=True,
                                     help="COCO annotation JSON whose category names go into the metadata")
    min_size: int | None = shared(DetectConfig, "min_size", help="shorter side recorded in the metadata (default: "
                                  "the checkpoint's input contract; the paper's 800 where it records none)")
    max_size: int | None = shared(DetectConfig, "max_size", help="longer side cap recorded in the metadata "
                                  "(default: the checkpoint's)")

    def __post_init__(self) -> None:
        options.check(self)


def main(argv: list[str] | None = None) -> None:
    args, _ = options.parse(options.parser(ExportConfig, __doc__), ExportConfig, argv)
    try:
        args = options.with_absolute_paths(args)
        output_format(args.output)
        _check_writable(args.output)
        names = None
        if args.annotations:
            names = {c["id"]: c["name"] for c in load_coco(args.annotations, ".", check_files=False).categories}
        from model.export import export_checkpoint  # torch: after the checks above, so a bad request fails at once
        report = export_checkpoint(args.checkpoint, args.output, opset=args.opset, class_names=names,
                                   min_size=args.min_size, max_size=args.max_size,
                                   log=lambda line: print(f"export: {line}", file=sys.stderr))
    except (ValueError, ImportError, OSError) as e:  # ExportError and CheckpointError are ValueErrors
        sys.exit(f"export: {e}")
    if "files" in report:  # a transformers folder: the weights as they are, nothing to verify
        print(f"wrote {report['weights'][:19]}... as a transformers folder {report['output']} "
              f"({', '.join(report['files'])})")
    else:
        print(f"exported {report['weights'][:19]}... to {report['output']} ({report['bytes'] / 1e6:.1f} MB, "
              f"{report['export_seconds']} s); verified: max |difference| "
              + ", ".join(f"{k} {v:.2g}" for k, v in report["max_abs_difference"].items()))
    print(json.dumps(report))


def _check_writable(output: str) -> None:
    """A local output whose folder cannot be written fails now, not after the export."""
    if "://" in output:
        return
    folder = Path(output).resolve().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise OSError(f"cannot write {output}: {folder} is not a writable folder")


if __name__ == "__main__":
    main()
