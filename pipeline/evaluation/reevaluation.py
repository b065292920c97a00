"""Scheduled re-evaluation: score every new checkpoint on a fixed evaluation set, keep a history.

History layout (local or s3://):

    HISTORY/rows/<key>.parquet         one row per (weights, annotation file, parameters)
    HISTORY/predictions/<key>/<run>/   the detections that row was scored from
    HISTORY/history.png, HISTORY/report.md

A row holds the 12 box stats, segm_* for a checkpoint with the mask head, and PQ, SQ, RQ (and
their _th / _st) for one with stuff classes when --panoptic-annotations is given.
A row's file is named by its key and written whole, so two runs at once can at worst
write the same row twice to the same name: never a duplicate, never a torn file.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import time
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

import storage as uris
from model.checkpoint import read_checkpoint, weights_id

from ..coco import load_coco
from ..detection.config import DetectConfig
from ..detection.run import run_detection
from .config import ReevaluateConfig
from .metrics import evaluate_table
from .report import flat_metrics
from .scoring import MAX_DETECTIONS, CocoScorer

CHECKPOINT_SUFFIXES = (".pt", ".pth")
# A checkpoint's score counts only when at most this share of the evaluation images failed
# (missing, unreadable): more means the evaluation set, not the checkpoint, is wrong.
MAX_ERROR_FRACTION = 0.05


def find_checkpoints(root: str) -> list[dict[str, Any]]:
    """Our checkpoint files (incl. Ray Train run folders), reference .pth files and Hugging
    Face folders under root: uri, size, modified time; oldest first."""
    fs, path = uris.resolve(root)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"no checkpoints folder or file at {root}")
    prefix = uris.listed_uri_prefix(root)
    infos = [info] if info.is_file else fs.get_file_info(pafs.FileSelector(path, recursive=True))
    found = []
    for i in infos:
        if not i.is_file:
            continue
        if i.base_name.endswith(CHECKPOINT_SUFFIXES):
            found.append({"uri": prefix + i.path, "size": i.size, "modified": _seconds(i.mtime)})
        elif i.base_name == "config.json" and any(
                fs.get_file_info(f"{i.path[:-len('config.json')]}{w}").is_file
                for w in ("model.safetensors", "pytorch_model.bin")):
            folder = i.path[: -len("/config.json")]
            found.append({"uri": prefix + folder, "size": i.size, "modified": _seconds(i.mtime)})
    return sorted(found, key=lambda c: (c["modified"], c["uri"]))


def _seconds(mtime: dt.datetime | None) -> float:
    return mtime.timestamp() if mtime else 0.0


def evaluation_key(weights: str, dataset: str, parameters: dict[str, Any]) -> str:
    text = json.dumps({"weights": weights, "dataset": dataset, "parameters": parameters}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def read_history(history: str) -> list[dict[str, Any]]:
    """Every row, oldest checkpoint first. Rows written before the cap was a parameter were
    scored at COCO's 100 and say so once read."""
    fs, root = uris.resolve(uris.join(history, "rows"))
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return []
    files = [i.path for i in fs.get_file_info(pafs.FileSelector(root)) if i.base_name.endswith(".parquet")]
    rows = [r for f in files for r in pq.read_table(f, filesystem=fs).to_pylist()]
    for row in rows:
        row.setdefault("max_dets", MAX_DETECTIONS)
        row["parameters"] = json.dumps({"max_dets": MAX_DETECTIONS, **json.loads(row["parameters"])}, sort_keys=True)
    return sorted(rows, key=lambda r: (r["checkpoint_modified"], r["checkpoint"], r["evaluated_at"]))


def last_ar(row: dict[str, Any]) -> str:
    """The name of a row's AR at its detection cap (AR100 under COCO's rule)."""
    return f"AR{row['max_dets']}"


def write_row(history: str, row: dict[str, Any]) -> str:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([row]), buffer)
    target = uris.join(history, "rows", f"{row['key']}.parquet")
    uris.write_bytes(target, buffer.getvalue())
    return target


def reevaluate(config: ReevaluateConfig) -> dict[str, Any]:
    """Detect + score each checkpoint not yet in the history; returns the run's summary."""
    started = time.time()
    config = config.resolved()
    annotation_bytes = uris.read_bytes(config.annotations)
    dataset_hash = "sha256:" + hashlib.sha256(annotation_bytes).hexdigest()
    parameters = {"score_threshold": config.score_threshold, "min_size": config.min_size,
                  "max_size": config.max_size, "max_dets": config.max_dets}
    history = read_history(config.history)
    done_files = {(r["checkpoint"], r["checkpoint_size"], r["checkpoint_modified"]) for r in history
                  if r["dataset"] == dataset_hash and json.loads(r["parameters"]) == parameters}
    done_keys = {r["key"] for r in history}
    gt = None
    new_rows = []
    found_files = find_checkpoints(config.checkpoints)
    known: list[str] = []  # files already scored, unchanged
    copies: list[str] = []  # files whose weights were scored under another name
    for found in found_files:
        if (found["uri"], found["size"], found["modified"]) in done_files:
            known.append(found["uri"])  # no need to even read its weights
            continue
        _, state_dict, _ = read_checkpoint(found["uri"])
        key = evaluation_key(weights_id(state_dict), dataset_hash, parameters)
        if key in done_keys:
            copies.append(found["uri"])
            continue
        if gt is None:
            gt = CocoScorer(load_coco(config.annotations, config.images, check_files=False).raw, config.backend,
                            config.max_dets)
        row = score_checkpoint(config, found, weights_id(state_dict), dataset_hash, parameters, key, gt)
        write_row(config.history, row)
        new_rows.append(row)
        done_keys.add(key)
    history = read_history(config.history)
    regressions = find_regressions(history, {r["key"] for r in new_rows}, config.regression_pct)
    written = write_reports(config.history, history, regressions) if new_rows else []
    return {
        "history": config.history,
        "evaluated": [{"checkpoint": r["checkpoint"], **{n: r[n] for n in ("AP", "AP50", last_ar(r), "segm_AP", "PQ")
                                                         if n in r}}
                      for r in new_rows],
        "found": len(found_files),
        "already_scored": known,
        "copies": copies,  # same weights as a checkpoint in the history (best/ beside its epoch's)
        "rows": len(history),
        "regressions": regressions,
        "written": written,
        "seconds": round(time.time() - started, 1),
    }


def score_checkpoint(config: ReevaluateConfig, found: dict[str, Any], weights: str, dataset: str,
                        parameters: dict[str, Any], key: str, gt: CocoScorer) -> dict[str, Any]:
    output = uris.join(config.history, "predictions", key, uuid.uuid4().hex[:12])  # this run's own folder
    detect_started = time.time()
    detection = run_detection(DetectConfig(
        images=config.annotations, image_root=config.images, output=output, checkpoint=found["uri"],
        score_threshold=config.score_threshold, min_size=config.min_size, max_size=config.max_size,
        batch_size=config.batch_size, actors=config.actors,
    ))
    failed = sum(detection["errors"].values())
    if failed > MAX_ERROR_FRACTION * detection["inputs"]:
        raise ValueError(f"{failed} of the {detection['inputs']} evaluation images of {found['uri']} could not be "
                         f"detected ({detection['errors']}): more than {MAX_ERROR_FRACTION:.0%}, so no history row "
                         f"was written; is --images {config.images} the folder of the annotation file's images?")
    evaluate_started = time.time()
    result = evaluate_table(output, gt, config.panoptic_annotations, config.panoptic_folder)
    return {
        "key": key,
        "evaluated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "checkpoint": found["uri"],
        "checkpoint_size": found["size"],
        "checkpoint_modified": found["modified"],
        "weights": weights,
        "dataset": dataset,
        "parameters": json.dumps(parameters, sort_keys=True),
        "backend": result["backend"],
        "max_dets": result["max_dets"],
        **flat_metrics(result),  # boxes; masks and PQ where the checkpoint makes them
        "per_category": json.dumps(result["per_category"], sort_keys=True),
        "images": detection["inputs"],
        "detections": result["report"]["detections"],
        "missed_images": result["report"]["missed_images"],
        "errors": json.dumps(detection["errors"], sort_keys=True),
        "predictions": output,
        "detect_seconds": round(evaluate_started - detect_started, 2),
        "evaluate_seconds": round(time.time() - evaluate_started, 2),
    }


def find_regressions(history: list[dict[str, Any]], new_keys: set[str], pct: float) -> list[dict[str, Any]]:
    """New rows whose AP is more than pct % (relative) below the previous or the best earlier row
    of the same series: the same annotation file and parameters (a different cap or image size
    gives different numbers, so those rows are never compared)."""
    regressions = []
    for i, row in enumerate(history):
        earlier = [r for r in history[:i] if (r["dataset"], r["parameters"]) == (row["dataset"], row["parameters"])]
        if row["key"] not in new_keys or not earlier:
            continue
        for against, ref in (("previous", earlier[-1]), ("best", max(earlier, key=lambda r: r["AP"]))):
            if ref["AP"] > 0 and (ref["AP"] - row["AP"]) / ref["AP"] * 100 > pct:
                regressions.append({"checkpoint": row["checkpoint"], "AP": row["AP"], "against": against,
                                    "reference": ref["checkpoint"], "reference_AP": ref["AP"],
                                    "drop_pct": round((ref["AP"] - row["AP"]) / ref["AP"] * 100, 3)})
    return regressions


def write_reports(history_uri: str, history: list[dict[str, Any]], regressions: list[dict[str, Any]]) -> list[str]:
    """history.png (AP, AP50 and AR at the cap over checkpoints) and report.md beside the history."""
    figure = Figure(figsize=(8, 4))
    axes = figure.add_subplot()
    steps = range(1, len(history) + 1)
    caps = sorted({r["max_dets"] for r in history})
    for name, values in (("AP", [r["AP"] for r in history]), ("AP50", [r["AP50"] for r in history]),
                         (f"AR{caps[0]}" if len(caps) == 1 else "AR at the row's max_dets",
                          [r[last_ar(r)] for r in history])):
        axes.plot(steps, values, marker="o", label=name)
    axes.set_xlabel("checkpoint (oldest first)")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # checkpoints are counted, not measured
    axes.set_ylim(bottom=0)
    axes.legend()
    axes.grid(alpha=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    png, markdown = uris.join(history_uri, "history.png"), uris.join(history_uri, "report.md")
    uris.write_bytes(png, buffer.getvalue())
    flagged = {r["checkpoint"] for r in regressions}
    lines = ["# Re-evaluation history", "", "![AP over checkpoints](history.png)", "",
             "| # | checkpoint | evaluated | max dets | AP | AP50 | AP75 | AR at max dets | mask AP | PQ | flag |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(history, 1):
        flag = "regression" if r["checkpoint"] in flagged else ""
        mask_ap, pq_all = (f"{r[k]:.4f}" if r.get(k) is not None else "-" for k in ("segm_AP", "PQ"))
        lines.append(f"| {i} | `{r['checkpoint']}` | {r['evaluated_at']} | {r['max_dets']} | {r['AP']:.4f} "
                     f"| {r['AP50']:.4f} | {r['AP75']:.4f} | {r[last_ar(r)]:.4f} | {mask_ap} | {pq_all} | {flag} |")
    for g in regressions:
        lines.append(f"\n- {g['checkpoint']}: AP {g['AP']:.4f}, {g['drop_pct']}% below the {g['against']} "
                     f"({g['reference']}, AP {g['reference_AP']:.4f})")
    uris.write_bytes(markdown, ("\n".join(lines) + "\n").encode())
    return [png, markdown]
