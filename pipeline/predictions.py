"""The predictions table (DESIGN.md): one row per input image, written as Parquet part files.

A part file holds rows of one input shard (pipeline/detection/plan.py) and is named after it, its
row count and a hash of its paths (`part-000042-00512-<hash>.parquet`); it is written whole
(local rename, one S3 PUT), so it is either complete or absent, and listing the names says
how many rows of each shard are done without opening a file. Each file's key-value metadata
holds the run's parameters and its error counts by kind.
"""
from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

import storage as uris

SCHEMA = pa.schema([
    ("path", pa.string()),
    ("image_id", pa.int64()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("boxes", pa.list_(pa.list_(pa.float32(), 4))),
    ("scores", pa.list_(pa.float32())),
    ("labels", pa.list_(pa.int32())),
    ("error", pa.string()),
    ("model", pa.string()),
    # each box's mask (a checkpoint with the mask head): COCO compressed RLE counts at the row's
    # height x width (pycocotools.mask.decode({"size": [height, width], "counts": c})); null otherwise
    ("masks", pa.list_(pa.string())),
    # the image's panoptic segmentation (a mask-head checkpoint with stuff classes): JSON
    # {"file_name", "segments_info": [{id, category_id, isthing, area}]}, its PNG (COCO panoptic
    # colours) at OUTPUT/_panoptic/<file_name>; null otherwise (pipeline/panoptic.py)
    ("panoptic", pa.string()),
])
METADATA_KEY = b"detr.run"  # JSON of the run's parameters in each file's key-value metadata
COUNTS_KEY = b"detr.errors"  # JSON of the file's error rows by kind
PART_PREFIX = "part-"
# OUTPUT/_panoptic/: the panoptic PNGs (pipeline/panoptic.py); "_" so that Parquet readers of the
# folder (pyarrow, pandas, Spark) skip it, as they skip _inputs/
PANOPTIC_FOLDER = "_panoptic"
# Boxes scoring below this are dropped unless a job says otherwise: bulk detection's default and
# training's validation alike, so the AP a run prints is that of jobs/detect.py then jobs/evaluate.py.
# torchvision's and Detectron2's convention: COCO AP within ~0.002 of keeping every query.
SCORE_THRESHOLD = 0.05


def detections_table(
    path: Sequence[str],
    image_id: Sequence[int | None],
    width: Sequence[int | None],
    height: Sequence[int | None],
    detections: Sequence[dict[str, np.ndarray] | None],
    error: Sequence[str | None],
    model: str,
) -> pa.Table:
    """Rows of the table; detections[i] (boxes [N,4] xyxy, scores [N], labels [N], and masks [N]
    RLE counts with the mask head, and panoptic, its JSON text, with stuff classes) is None for
    an error row."""
    counts = np.array([0 if d is None else len(d["scores"]) for d in detections], dtype=np.int32)
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    missing = pa.array([d is None for d in detections], pa.bool_())

    def ragged(key: str, dtype: type, width: int = 0) -> pa.Array:
        parts: list[np.ndarray] = [np.asarray(d[key], dtype).reshape(-1) for d in detections if d is not None]
        flat = pa.array(np.concatenate(parts) if parts else np.zeros(0, dtype))
        values = pa.FixedSizeListArray.from_arrays(flat, width) if width else flat
        return pa.ListArray.from_arrays(offsets, values, mask=missing)

    columns = [
        pa.array(path, pa.string()),
        pa.array(image_id, pa.int64()),
        pa.array(width, pa.int32()),
        pa.array(height, pa.int32()),
        ragged("boxes", np.float32, 4),
        ragged("scores", np.float32),
        ragged("labels", np.int32),
        pa.array(error, pa.string()),
        pa.array([model] * len(path), pa.string()),
        pa.array([d.get("masks") if d is not None else None for d in detections], pa.list_(pa.string())),
        pa.array([d.get("panoptic") if d is not None else None for d in detections], pa.string()),
    ]
    return pa.Table.from_arrays(columns, schema=SCHEMA)


def part_name(shard: int, paths: Sequence[str]) -> str:
    """Deterministic: the same images of a shard always land in the same file name."""
    digest = hashlib.sha256("\n".join(sorted(paths)).encode()).hexdigest()[:20]
    return f"{PART_PREFIX}{shard:06d}-{len(paths):05d}-{digest}.parquet"


def parse_part_name(name: str) -> tuple[int, int]:
    """(shard, rows) from a part file's base name."""
    _, shard, rows, _ = name.split("-", 3)
    return int(shard), int(rows)


def write_part(output: str, shard: int, table: pa.Table, run: dict[str, Any]) -> str:
    """Write one complete part file of a shard's rows (sorted by path; run parameters and
    error counts in its metadata)."""
    table = table.cast(SCHEMA).sort_by("path")
    table = table.replace_schema_metadata({METADATA_KEY: json.dumps(run, sort_keys=True).encode(),
                                           COUNTS_KEY: json.dumps(error_kinds(table["error"])).encode()})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    target = uris.join(output, part_name(shard, table.column("path").to_pylist()))
    uris.write_bytes(target, buffer.getvalue())
    return target


def file_error_kinds(fs: pafs.FileSystem, path: str) -> dict[str, int]:
    """The error counts a part file's footer records (one small read)."""
    with fs.open_input_file(path) as f:
        metadata = pq.read_schema(f).metadata or {}
    return json.loads(metadata.get(COUNTS_KEY, b"{}"))


def part_files(output: str) -> list[str]:
    """Paths (inside the output's filesystem) of the complete part files, sorted."""
    fs, root = uris.resolve(output)
    if fs.get_file_info(root).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=False))
    return sorted(i.path for i in infos if i.is_file and i.base_name.startswith(PART_PREFIX)
                  and i.base_name.endswith(".parquet"))


def read_predictions(source: str, columns: Sequence[str] | None = None) -> pa.Table:
    """The table from one Parquet file or a folder of part files (local or s3://)."""
    fs, root = uris.resolve(source)
    if fs.get_file_info(root).type == pafs.FileType.File:
        files = [root]
    else:
        files = part_files(source)
    if not files:
        return SCHEMA.empty_table().select(list(columns or SCHEMA.names))
    # the schema fills columns that older files lack (masks) with nulls
    return pads.dataset(files, schema=SCHEMA, filesystem=fs, format="parquet").to_table(
        columns=list(columns) if columns else None)


def prediction_batches(source: str, columns: Sequence[str], batch_rows: int,
                       optional: Sequence[str] = ()) -> Iterator[pa.RecordBatch]:
    """The rows of a predictions file or folder, batch_rows at a time with little read-ahead,
    so that a reader holds about one batch; with the `optional` columns the table has (a table
    written before masks or panoptic output were has no such columns). A source that is missing,
    holds no part files or lacks one of `columns` is a ValueError that says so."""
    fs, root = uris.resolve(source)
    kind = fs.get_file_info(root).type
    if kind == pafs.FileType.NotFound:
        raise ValueError(f"no predictions at {source}: no such file or folder")
    files = [root] if kind == pafs.FileType.File else part_files(source)
    if not files:
        raise ValueError(f"no predictions at {source}: the folder holds no {PART_PREFIX}*.parquet files")
    try:
        dataset = pads.dataset(files, filesystem=fs, format="parquet")
    except pa.ArrowInvalid as e:
        raise ValueError(f"{source} is not a Parquet predictions table: {e}") from e
    missing = [c for c in columns if c not in dataset.schema.names]
    if missing:
        raise ValueError(f"{source} is not a predictions table: it lacks the column(s) {missing}")
    columns = [*columns, *(c for c in optional if c in dataset.schema.names)]
    yield from dataset.to_batches(columns=columns, batch_size=batch_rows, batch_readahead=1,
                                  fragment_readahead=1)


def run_metadata(source: str) -> dict[str, Any] | None:
    """The run parameters stored in a predictions file, or the first part file of a folder; None
    for an empty output or a file written by something else."""
    fs, path = uris.resolve(source)
    files = [path] if fs.get_file_info(path).is_file else part_files(source)
    if not files:
        return None
    with fs.open_input_file(files[0]) as f:
        metadata = pq.read_schema(f).metadata or {}
    return json.loads(metadata[METADATA_KEY]) if METADATA_KEY in metadata else None


def remove_parts(output: str) -> int:
    """Delete the part files of an output folder and its panoptic PNGs (for a fresh run);
    returns how many part files."""
    fs, root = uris.resolve(output)
    files = part_files(output)
    for path in files:
        fs.delete_file(path)
    if fs.get_file_info(f"{root}/{PANOPTIC_FOLDER}").type == pafs.FileType.Directory:
        fs.delete_dir(f"{root}/{PANOPTIC_FOLDER}")
    return len(files)


def error_kinds(errors: pa.ChunkedArray | pa.Array) -> dict[str, int]:
    """Counts of error rows by kind (the text before the first colon)."""
    errors = errors.drop_null()
    if not len(errors):
        return {}
    kinds = pc.utf8_trim_whitespace(pc.list_element(pc.split_pattern(errors, ":", max_splits=1), 0))
    return {row["values"]: row["counts"] for row in pc.value_counts(kinds).to_pylist()}
