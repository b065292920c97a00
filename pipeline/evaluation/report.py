"""What an evaluation says to a person and leaves in files: the console tables, metrics.json and
metrics.parquet, the one flat row of numbers every job records, and what the predictions' own
metadata says about them."""
from __future__ import annotations

import io
import json
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

import storage as uris
from model.contract import PAPER_CONTRACT

from ..predictions import SCORE_THRESHOLD


def flat_metrics(result: dict[str, Any]) -> dict[str, float]:
    """Every number of an evaluation in one flat row: the 12 stats, segm_* of the masks, and PQ,
    SQ, RQ (and their _th / _st)."""
    return {**result["metrics"],
            **{f"segm_{name}": value for name, value in result.get("segm", {}).get("metrics", {}).items()},
            **result.get("panoptic", {}).get("metrics", {})}


def run_warnings(run: dict[str, Any], metrics: dict[str, float]) -> list[str]:
    """What the predictions' own metadata (the detection run's parameters) says about their AP."""
    said = []
    threshold = run.get("score_threshold")
    if threshold is not None and threshold > SCORE_THRESHOLD:
        said.append(f"the predictions keep only boxes scoring at least {threshold:g} (detect's --score-threshold, "
                    "in their metadata): COCO AP counts lower-scoring boxes too, so this AP is below the one "
                    f"training's validation reports; detect with the default {SCORE_THRESHOLD:g} to compare")
    own = run.get("checkpoint_contract")
    sizes = (run.get("min_size"), run.get("max_size"))
    if own and sizes != (own["min_size"], own["max_size"]):
        said.append(f"the images were resized to {sizes[0]} / {sizes[1]} (--min-size / --max-size), not the "
                    f"{own['min_size']} / {own['max_size']} the checkpoint was trained and validated with")
    paper = (PAPER_CONTRACT.min_size, PAPER_CONTRACT.max_size)
    if metrics.get("AP", 0) <= 0 and "checkpoint_contract" in run and own is None and sizes == paper:
        said.append(f"the checkpoint records no input contract, so its images were resized to the paper's "
                    f"{paper[0]} / {paper[1]}: a model trained at other sizes detects little at these")
    return said


def write_evaluation(output: str, result: dict[str, Any]) -> list[str]:
    """output/metrics.json (everything) and output/metrics.parquet (one row: inputs, backend and
    cap, the 12 stats as columns (and segm_* for masks, PQ, SQ, RQ and their _th / _st for panoptic),
    per-category AP and the report as JSON text)."""
    text = json.dumps(result, indent=2, sort_keys=True)
    row = {"predictions": [result["predictions"]], "annotations": [result["annotations"]],
           "backend": [result["backend"]], "max_dets": [result["max_dets"]],
           **{name: [value] for name, value in flat_metrics(result).items()},
           "per_category": [json.dumps(result["per_category"], sort_keys=True)],
           "report": [json.dumps(result["report"], sort_keys=True)]}
    buffer = io.BytesIO()
    pq.write_table(pa.table(row), buffer)
    targets = [uris.join(output, "metrics.json"), uris.join(output, "metrics.parquet")]
    uris.write_bytes(targets[0], text.encode())
    uris.write_bytes(targets[1], buffer.getvalue())
    return targets


def format_tables(result: dict[str, Any]) -> str:
    """The 12 stats and the per-category AP, as a person reads them (boxes, then masks)."""
    lines = []
    for kind, scored in (("boxes", result), ("masks", result.get("segm"))):
        if not scored or "metrics" not in scored:
            continue
        lines.append(f"{kind}:")
        lines += [f"{name:>6} {value:.4f}" for name, value in scored["metrics"].items()]
        lines.append(f"{'id':>6} {'AP':>7}  category")
        for category_id, entry in sorted(scored["per_category"].items()):
            ap = "    n/a" if entry["AP"] is None else f"{entry['AP']:.4f}"
            lines.append(f"{category_id:>6} {ap:>7}  {entry['name']}")
    if "panoptic" in result:
        lines += format_panoptic(result["panoptic"])
    return "\n".join(lines)


def format_panoptic(scored: dict[str, Any]) -> list[str]:
    """panopticapi's table (PQ, SQ, RQ in %, categories counted) and PQ per category."""
    def cell(value: float | None) -> str:
        return "   n/a" if value is None else f"{100 * value:6.1f}"

    lines = ["panoptic:", f"{'':>8} {'PQ':>6} {'SQ':>6} {'RQ':>6} {'N':>4}"]
    lines += [f"{group:>8} {cell(v['pq'])} {cell(v['sq'])} {cell(v['rq'])} {v['n']:>4}"
              for group, v in scored["groups"].items()]
    lines.append(f"{'id':>6} {'PQ':>7}  category")
    lines += [f"{category_id:>6} {cell(entry['pq']):>7}  {entry['name']}"
              for category_id, entry in sorted(scored["per_category"].items())]
    return lines
