"""The inputs of a bulk-detection run, cut into shards: the unit of work and of resumption.

A planning task (a Ray task, never the driver) streams the input listing - a folder or
s3:// prefix, a COCO annotation file, or a manifest (.txt of URIs, .parquet with a `path`
column, or a folder of such Parquet files) - into shard files under OUTPUT/_inputs/
(`shard-000042.parquet`: path, image_id, shard) and writes OUTPUT/_inputs/plan.json (the
source and each shard's row count) last. The driver then holds one entry per shard, never
one per image: 100 M inputs in shards of 8,192 are ~12,000 entries.

Each shard's rows end in part files named after it (see predictions.part_name): a shard is
done when its part files hold exactly its row count. A re-run over the same output reuses
the plan (a folder is not listed again), skips the done shards, deletes the part files of
shards a killed run left half-written and runs those again.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

import storage as uris

from ..coco import load_coco
from ..images import IMAGE_EXTENSIONS

INPUTS_DIR = "_inputs"  # a leading underscore: Parquet readers of the output folder skip it
PLAN_FILE = "plan.json"
SCHEMA = pa.schema([("path", pa.large_string()), ("image_id", pa.int64()), ("shard", pa.int32())])
_BATCH_ROWS = 65_536  # rows a planning step holds at once, besides its current shard


@dataclass(frozen=True)
class Plan:
    source: str  # what the user passed as --images (credentials stripped)
    image_root: str | None
    shard_rows: list[int]  # shard i's number of inputs (after removing repeats within it)

    @property
    def inputs(self) -> int:
        return sum(self.shard_rows)

    def to_json(self) -> str:
        return json.dumps({"source": self.source, "image_root": self.image_root, "shard_rows": self.shard_rows})


def plan_uri(output: str) -> str:
    return uris.join(output, INPUTS_DIR, PLAN_FILE)


def shard_uri(output: str, shard: int) -> str:
    return uris.join(output, INPUTS_DIR, f"shard-{shard:06d}.parquet")


def load_or_make_plan(images: str, image_root: str | None, output: str, shard_size: int) -> Plan:
    """The output's existing plan for these inputs, or a new one made by a Ray task."""
    source = uris.strip_credentials(images)
    if uris.file_type(plan_uri(output)) == pafs.FileType.File:
        saved = json.loads(uris.read_bytes(plan_uri(output)))
        plan = Plan(saved["source"], saved["image_root"], saved["shard_rows"])
        if (plan.source, plan.image_root) != (source, image_root):
            raise ValueError(f"{output} holds a run over other inputs ({plan.source}); resume with the same "
                             "--images / --image-root, or pass --overwrite / another output")
        return plan
    task = ray.remote(num_cpus=0.25, max_retries=3)(write_plan)
    return ray.get(task.remote(images, image_root, output, shard_size))


def write_plan(images: str, image_root: str | None, output: str, shard_size: int) -> Plan:
    """Stream the inputs into shard files of at most shard_size rows; plan.json last."""
    shard_rows: list[int] = []
    pending: list[pa.Table] = []
    held = 0

    def flush(rows: pa.Table) -> None:
        rows = unique_paths(rows)
        shard = len(shard_rows)
        shard_rows.append(rows.num_rows)
        rows = rows.append_column("shard", pa.array([shard] * rows.num_rows, pa.int32()))
        path, fs = _sink(shard_uri(output, shard))
        pq.write_table(rows.cast(SCHEMA), path, filesystem=fs)

    for batch in input_batches(images, image_root):
        pending.append(batch)
        held += batch.num_rows
        while held >= shard_size:
            table = pa.concat_tables(pending)
            flush(table.slice(0, shard_size))
            pending, held = [table.slice(shard_size)], table.num_rows - shard_size
    if held:
        flush(pa.concat_tables(pending))
    plan = Plan(uris.strip_credentials(images), image_root, shard_rows)
    uris.write_bytes(plan_uri(output), plan.to_json().encode())
    return plan


def _sink(uri: str) -> tuple[str, pafs.FileSystem]:
    fs, path = uris.resolve(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    return path, fs


def unique_paths(rows: pa.Table) -> pa.Table:
    """The first row of each path (a path listed twice in one shard is detected once)."""
    first = pc.equal(pc.index_in(rows["path"], rows["path"]), pa.array(range(rows.num_rows), pa.int32()))
    return rows.filter(first)


def input_batches(images: str, image_root: str | None = None) -> Iterator[pa.Table]:
    """(path, image_id) tables in input order, a bounded number of rows at a time for manifests."""
    if images.endswith(".json"):
        root = image_root or (images.rsplit("/", 1)[0] if "/" in images else ".")
        dataset = load_coco(images, root, check_files=False)  # a missing file becomes an error row
        yield _rows([dataset.image_uri(i) for i in dataset.images], [i["id"] for i in dataset.images])
    elif images.endswith(".txt"):
        yield from _text_manifest(images)
    elif images.endswith(".parquet") or _is_parquet_folder(images):
        yield from _parquet_manifest(images)
    else:
        yield _rows(list_image_files(images))


def _rows(paths: list[str], ids: list[int] | None = None) -> pa.Table:
    return pa.table({"path": pa.array(paths, pa.large_string()),
                     "image_id": pa.array(ids, pa.int64()) if ids is not None else pa.nulls(len(paths), pa.int64())})


def _text_manifest(uri: str) -> Iterator[pa.Table]:
    fs, path = uris.resolve(uri)
    tail, paths = b"", []
    with fs.open_input_stream(path) as f:
        while True:
            chunk = f.read(1 << 24)
            lines = (tail + chunk).split(b"\n")
            tail = lines.pop() if chunk else b""
            for line in lines:
                line = line.strip().decode()
                if line and not line.startswith("#"):
                    paths.append(line)
            if len(paths) >= _BATCH_ROWS or not chunk:
                yield _rows(paths)
                paths = []
            if not chunk:
                return


def _parquet_manifest(uri: str) -> Iterator[pa.Table]:
    fs, path = uris.resolve(uri)
    dataset = pads.dataset(path, filesystem=fs, format="parquet")
    if "path" not in dataset.schema.names:
        raise ValueError(f"manifest {uri} has no 'path' column (columns: {dataset.schema.names})")
    columns = ["path"] + (["image_id"] if "image_id" in dataset.schema.names else [])
    for batch in dataset.to_batches(columns=columns, batch_size=_BATCH_ROWS):
        ids = batch["image_id"].cast(pa.int64()) if "image_id" in columns else pa.nulls(batch.num_rows, pa.int64())
        yield pa.table({"path": batch["path"].cast(pa.large_string()), "image_id": ids})


def _is_parquet_folder(uri: str) -> bool:
    fs, path = uris.resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return False
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    return any(i.is_file and i.base_name.endswith(".parquet") for i in infos)


def list_image_files(folder: str) -> list[str]:
    """Every file under folder (recursive) with an image extension, as URIs, sorted."""
    fs, root = uris.resolve(folder)
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        raise FileNotFoundError(f"no folder at {folder}")
    scheme = uris.listed_uri_prefix(folder)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    return sorted(scheme + i.path for i in infos if i.is_file and i.base_name.lower().endswith(IMAGE_EXTENSIONS)
                  and f"/{INPUTS_DIR}/" not in i.path)


def remove_plan(output: str) -> None:
    fs, path = uris.resolve(uris.join(output, INPUTS_DIR))
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        fs.delete_dir(path)


def read_shards(output: str, shards: list[int], num_cpus: float) -> ray.data.Dataset:
    """The rows of these shards, a read task per shard file. The plan names every file, so
    nothing is listed: ray.data.read_parquet (Ray 2.60) would start 32 footer-reading actor
    processes per run, seconds of CPU before the first image on a small machine."""
    files = [{"uri": shard_uri(output, s)} for s in shards]
    return ray.data.from_items(files, override_num_blocks=len(files)).map_batches(
        _read_shard_files, batch_size=1, batch_format="pyarrow", num_cpus=num_cpus)


def _read_shard_files(batch: pa.Table) -> pa.Table:
    tables = []
    for uri in batch["uri"].to_pylist():
        fs, path = uris.resolve(uri)
        tables.append(pq.read_table(path, filesystem=fs, schema=SCHEMA))
    return pa.concat_tables(tables)
