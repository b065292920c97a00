"""The model actor of bulk detection: decode, pad onto canvases, run DETR, keep the boxes (and masks).

Ray Data hands an actor a window of rows (encoded bytes + header facts); the actor groups
them by canvas into model batches of up to `batch_size`, decodes the next batch on a thread
while the model runs the current one (pipeline/images.py: nvJPEG in one batched call on a GPU),
and returns one row per input. Training's validation runs the same Detector in its workers
(pipeline/training/validation.py), so the AP a training run prints is the AP bulk detection delivers.

Faults: a batch that runs out of memory is split in halves and re-run; a batch that fails
otherwise is re-run image by image, so one bad image never costs its neighbours their rows;
a CUDA error (the context is unusable afterwards) ends the process, and Ray restarts the
actor and re-runs the window.
"""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from model.config import DetrConfig
from model.contract import InputContract
from model.interface import ModelConfig, build_model, config_from_dict, inference_copy, mask_rule_for, postprocess_for
from model.mask_postprocess import PostProcessPanoptic
from model.network import DetectionNetwork
from model.onnx_model import OnnxDetr

from .. import predictions
from ..images import Header, decode_images
from ..masks import encode
from ..panoptic import png_bytes, png_name

MASK_CHUNK = 16  # masks made at an image's full size at a time (a 4000x3000 photo: 12 MB each)

Batch = tuple[tuple[int, int], list[int]]  # (canvas, row indices)


def model_batches(canvas_heights: list, canvas_widths: list, errors: list, batch_size: int) -> list[Batch]:
    """Rows without an error grouped by canvas (in first-seen order), cut into batches."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (h, w, error) in enumerate(zip(canvas_heights, canvas_widths, errors)):
        if error is None:
            groups.setdefault((h, w), []).append(i)
    return [(canvas, rows[k:k + batch_size]) for canvas, rows in groups.items()
            for k in range(0, len(rows), batch_size)]


def panoptic_postprocess(config: ModelConfig) -> PostProcessPanoptic | None:
    """The panoptic segmentation of a model with the mask head and stuff classes, else None."""
    if not (config.masks and config.stuff_classes):
        return None
    return PostProcessPanoptic({c: c not in config.stuff_classes for c in range(config.num_classes)})


class Detector:
    """A model and its input contract: rows of the read stage (read.py) -> one
    predictions row each (and, with `panoptic`, its panoptic PNG in a `panoptic_png` column).
    Runs in-process (training's validation) or as DetectorActor."""

    def __init__(self, model: Callable[..., dict], config: ModelConfig, contract: InputContract,
                 score_threshold: float, batch_size: int, model_id: str, device: torch.device):
        self.model, self.contract, self.device = model, contract, device
        # DETR's mask head (DETRsegm) runs on the queries kept only; an ONNX graph's on every query
        self.masks_kept_only = isinstance(config, DetrConfig) and config.masks and not isinstance(model, OnnxDetr)
        self.panoptic = panoptic_postprocess(config)
        self.mean = torch.tensor(contract.image_mean, device=device).view(3, 1, 1)
        self.std = torch.tensor(contract.image_std, device=device).view(3, 1, 1)
        self.postprocess = postprocess_for(config, score_threshold)
        self.mask_rule = mask_rule_for(config)
        self.model_id, self.batch_size = model_id, batch_size
        self.decoder = ThreadPoolExecutor(1)  # decodes batch k+1 while the model runs batch k

    @classmethod
    def of_model(cls, model: DetectionNetwork, contract: InputContract, score_threshold: float, batch_size: int,
                 model_id: str = "") -> Detector:
        """An in-process detector running an inference copy of `model` (model/interface.py), on its device."""
        device = next(model.parameters()).device
        return cls(inference_copy(model).to(device), model.config, contract, score_threshold, batch_size, model_id,
                   device)

    def __call__(self, rows: pa.Table) -> pa.Table:
        n = rows.num_rows
        errors: list[str | None] = rows["error"].to_pylist()
        detections: list[dict | None] = [None] * n
        share = [0.0] * n  # 1 / images in the row's model call: sums to the number of calls
        batches = model_batches(rows["canvas_height"].to_pylist(), rows["canvas_width"].to_pylist(), errors,
                                self.batch_size)
        pending: Future | None = self.decoder.submit(self.decode, rows, batches[0]) if batches else None
        for k, (canvas, indices) in enumerate(batches):
            assert pending is not None  # submitted for every batch
            images, failed = pending.result()
            pending = self.decoder.submit(self.decode, rows, batches[k + 1]) if k + 1 < len(batches) else None
            for i, error in failed.items():
                errors[i] = error
            kept = [i for i in indices if i not in failed]
            for i, found, calls in self.run(kept, [images[i] for i in kept], canvas, rows):
                if isinstance(found, str):
                    errors[i] = found
                else:
                    detections[i], share[i] = found, 1.0 / calls
        paths = rows["path"].to_pylist()
        pngs = [d.pop("panoptic_png", None) if d else None for d in detections]
        for path, d in zip(paths, detections):
            if d and "panoptic" in d:
                d["panoptic"] = json.dumps({"file_name": png_name(path), "segments_info": d["panoptic"]})
        table = predictions.detections_table(
            paths, rows["image_id"].to_pylist(), rows["width"].to_pylist(),
            rows["height"].to_pylist(), detections, errors, self.model_id)
        table = table.append_column("shard", rows["shard"]).append_column("call_share", pa.array(share, pa.float32()))
        if self.panoptic is not None:  # the sink writes them beside the part file
            table = table.append_column("panoptic_png", pa.array(pngs, pa.binary()))
        return table

    # ------------------------------------------------------------ decoding

    def decode(self, rows: pa.Table, batch: Batch) -> tuple[dict[int, torch.Tensor], dict[int, str]]:
        """Displayed uint8 3xHxW images on the model's device, and the rows that failed."""
        _, indices = batch
        items = [(rows["data"][i].as_py(), Header(rows["width"][i].as_py(), rows["height"][i].as_py(),
                                                  rows["orientation"][i].as_py(), rows["plain_jpeg"][i].as_py()))
                 for i in indices]
        images: dict[int, torch.Tensor] = {}
        failed: dict[int, str] = {}
        for i, image in zip(indices, decode_images(items, self.device)):
            if isinstance(image, torch.Tensor):
                images[i] = image
            else:
                failed[i] = str(image)
        return images, failed

    # ------------------------------------------------------------ the model

    def run(self, indices: list[int], images: list[torch.Tensor], canvas: tuple[int, int],
            rows: pa.Table) -> list[tuple[int, dict | str, int]]:
        """(row, detections or error, images in its model call) for each image."""
        if not indices:
            return []
        try:
            found = self.forward(images, canvas, [(rows["height"][i].as_py(), rows["width"][i].as_py())
                                                  for i in indices])
            return [(i, d, len(indices)) for i, d in zip(indices, found)]
        except torch.OutOfMemoryError:
            if len(indices) == 1:
                return [(indices[0], "inference: out of memory for one image", 1)]
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            half = len(indices) // 2
            return (self.run(indices[:half], images[:half], canvas, rows)
                    + self.run(indices[half:], images[half:], canvas, rows))
        except Exception as e:
            if self.device.type == "cuda" and _is_cuda_fault(e):
                print(f"Detector: CUDA fault ({e}); exiting so that Ray restarts this actor", file=sys.stderr)
                os._exit(1)
            if len(indices) > 1:  # find the image that fails; the others keep their detections
                return [r for i, image in zip(indices, images) for r in self.run([i], [image], canvas, rows)]
            return [(indices[0], f"inference: {type(e).__name__}: {e}", 1)]

    @torch.inference_mode()
    def forward(self, images: list[torch.Tensor], canvas: tuple[int, int],
                sizes: list[tuple[int, int]]) -> list[dict[str, np.ndarray]]:
        pixels, mask = to_canvas(images, canvas, self.contract, self.mean, self.std)
        pixels = pixels.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            if self.masks_kept_only:
                outputs = self.model(pixels, mask, mask_queries=self.kept_queries)
            else:
                outputs = self.model(pixels, mask)
        found = self.postprocess(outputs, torch.tensor(sizes))
        if "pred_masks" in outputs:
            for d, logits, size in zip(found, outputs["pred_masks"], sizes):
                d["masks"] = self.masks(logits[d["queries"]], canvas, size)
        if self.panoptic is not None:
            for d, logits, masks, size in zip(found, outputs["pred_logits"], outputs["pred_masks"], sizes):
                d["panoptic"], d["panoptic_png"] = self.segments(logits, masks, canvas, size)
        return to_numpy(found)

    def kept_queries(self, outputs: dict) -> torch.Tensor:
        """[B,Q] bool: the queries whose masks are kept, those PostProcess keeps (and with
        panoptic output, those it takes: scoring above its threshold)."""
        threshold = self.postprocess.score_threshold
        if self.panoptic is not None:
            threshold = min(threshold, self.panoptic.threshold)
        return self.postprocess.query_scores(outputs["pred_logits"])[0] >= threshold

    def segments(self, logits: torch.Tensor, masks: torch.Tensor, canvas: tuple[int, int],
                 size: tuple[int, int]) -> tuple[list[dict], bytes]:
        """The image's panoptic segments_info and PNG at its original size; segment ids from 1, so
        that 0 stays void as in COCO panoptic (the reference numbers them from 0)."""
        if self.panoptic is None:
            raise ValueError("panoptic segments of a model without stuff classes")
        found = self.panoptic.segment(logits, masks, logits.shape[-1] - 1, self.contract.resized_size(*size), size,
                                      padded=canvas)
        segments = [{**s, "id": s["id"] + 1} for s in found["segments_info"]]
        ids = found["id_map"].numpy() + 1 if segments else np.zeros(size, np.int64)
        return segments, png_bytes(ids)

    def masks(self, logits: torch.Tensor, canvas: tuple[int, int], size: tuple[int, int]) -> list[str]:
        """The kept queries' masks at the image's original size, as RLE: MASK_CHUNK at a time, so
        that a large photo's masks are never all held at full size."""
        fed = self.contract.resized_size(*size)
        return [rle for start in range(0, len(logits), MASK_CHUNK)
                for rle in encode(self.mask_rule(logits[start:start + MASK_CHUNK], canvas, fed, size).cpu().numpy())]


def to_numpy(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each image's tensors as numpy arrays, copied from the device once per key for the whole
    batch (one synchronisation each, not one per image and key: at hundreds of images a second
    on a GPU, those add up)."""
    keys = [k for k, v in found[0].items() if isinstance(v, torch.Tensor)] if found else []
    out = [dict(d) for d in found]
    for key in keys:
        lengths = [len(d[key]) for d in found]
        values = torch.cat([d[key] for d in found]).cpu().numpy()
        for d, part in zip(out, np.split(values, np.cumsum(lengths)[:-1])):
            d[key] = part
    return out


def _is_cuda_fault(error: Exception) -> bool:
    return isinstance(error, getattr(torch, "AcceleratorError", ())) or "CUDA error" in str(error)


def to_canvas(images: Sequence[torch.Tensor], canvas: tuple[int, int], contract: InputContract,
              mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Displayed uint8 3xHxW images (on the model's device) -> resized, normalised (mean, std:
    the contract's, as [3,1,1] tensors on that device), zero-padded [B,3,*canvas] float batch
    and its mask [B,*canvas] (True on padding)."""
    device = images[0].device
    batch = torch.zeros((len(images), 3, *canvas), dtype=torch.float32, device=device)
    mask = torch.ones((len(images), *canvas), dtype=torch.bool, device=device)
    for image, padded, m in zip(images, batch, mask):
        height, width = contract.resized_size(image.shape[1], image.shape[2])
        padded[:, :height, :width] = (contract.resize(image, (height, width)) - mean) / std
        m[:height, :width] = False
    return batch, mask


class DetectorActor(Detector):
    """One model replica (an actor of bulk detection): a GPU where Ray gave it one, else CPU threads."""

    def __init__(self, weights: Any, model_id: str, score_threshold: float, batch_size: int,
                 contract: dict[str, Any], cpus: float):
        """weights: (config dict, state_dict or an ONNX graph's bytes), or an object ref of it
        (shared by all actors); contract: InputContract.to_dict()."""
        import ray  # only the actor needs Ray: the in-process Detector (training's validation) needs no cluster

        config_dict, state = ray.get(weights) if isinstance(weights, ray.ObjectRef) else weights
        config = config_from_dict(config_dict)
        on_gpu = torch.cuda.is_available() and ray.is_initialized() and bool(ray.get_gpu_ids())
        device = torch.device("cuda" if on_gpu else "cpu")
        if device.type == "cpu":
            torch.set_num_threads(max(1, int(cpus)))
        model: OnnxDetr | DetectionNetwork
        if isinstance(state, bytes):  # an exported graph: ONNX Runtime, CUDA provider on a GPU
            model = OnnxDetr(state, device.type, threads=max(1, int(cpus)))
        else:
            network = build_model(config)  # with the mask head when the checkpoint has one
            network.load_state_dict(state)
            model = inference_copy(network.eval()).to(device)
        super().__init__(model, config, InputContract.from_dict(contract), score_threshold, batch_size, model_id,
                         device)
