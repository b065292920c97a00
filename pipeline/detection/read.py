"""The CPU stage of bulk detection: read each image's encoded bytes and its header.

Read tasks pass the file's bytes on (a JPEG is 10-20x smaller than its pixels) with the
displayed size, EXIF orientation and canvas read from the header; the model actor decodes
(nvJPEG on a GPU). Reads run on a thread pool (object stores answer in tens of ms) through
one filesystem object per bucket and worker process (storage.py), and transient failures
(throttling, resets, timeouts) are retried with backoff; what still fails becomes that row's error.
"""
from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields

import pyarrow as pa

import storage as uris
from model.contract import InputContract

from ..images import ImageError, probe

ATTEMPTS = 6  # reads of one file before its row records `unreadable` (~6 s of backoff in all)
READ_THREADS = 16
# error kinds a later run retries (--retry-errors); the others are properties of the file
TRANSIENT_ERRORS = ("unreadable", "inference")
COLUMNS = pa.schema([
    ("path", pa.large_string()), ("image_id", pa.int64()), ("shard", pa.int32()),
    ("data", pa.large_binary()), ("width", pa.int32()), ("height", pa.int32()), ("orientation", pa.int8()),
    ("plain_jpeg", pa.bool_()), ("canvas_height", pa.int32()), ("canvas_width", pa.int32()),
    ("error", pa.string()),
])


def read_bytes(uri: str, attempts: int = ATTEMPTS) -> bytes:
    """A file's bytes; retries transient failures; ImageError `missing` / `unreadable` else."""
    for attempt in range(attempts):
        try:
            return uris.read_bytes(uri)  # one GET on S3, whatever the size
        except FileNotFoundError as e:
            raise ImageError("missing", f"no such file {uri}") from e
        except (PermissionError, IsADirectoryError) as e:
            raise ImageError("unreadable", f"{type(e).__name__}: {e}") from e
        except OSError as e:
            if attempt + 1 == attempts:
                raise ImageError("unreadable", f"{type(e).__name__} after {attempts} attempts: {e}") from e
            time.sleep(min(2.0, 0.1 * 2 ** attempt) * (0.5 + random.random()))  # jittered backoff
    raise AssertionError("unreachable")


@dataclass
class Read:
    """One file as the read stage passes it on: its bytes and header facts, or why not."""
    data: bytes = b""
    width: int | None = None
    height: int | None = None
    orientation: int | None = None
    plain_jpeg: bool | None = None
    canvas_height: int | None = None
    canvas_width: int | None = None
    error: str | None = None


def fetch(rows: pa.Table, contract: InputContract, max_pixels: int, attempts: int = ATTEMPTS) -> pa.Table:
    """path, image_id, shard -> the same rows with bytes, header facts, canvas (by the contract)
    and error."""
    paths = rows["path"].to_pylist()
    with ThreadPoolExecutor(min(READ_THREADS, max(1, len(paths)))) as pool:
        reads = list(pool.map(lambda p: read_one(p, contract, max_pixels, attempts), paths))
    read = {f.name: pa.array([getattr(r, f.name) for r in reads], COLUMNS.field(f.name).type) for f in fields(Read)}
    return pa.table({"path": rows["path"].cast(pa.large_string()), "image_id": rows["image_id"],
                     "shard": rows["shard"], **read}, schema=COLUMNS)


def read_one(path: str, contract: InputContract, max_pixels: int, attempts: int) -> Read:
    try:
        data = read_bytes(path, attempts)
        header = probe(data, max_pixels)
        canvas_height, canvas_width = contract.canvas_of(header.height, header.width)
        return Read(data, header.width, header.height, header.orientation, header.plain_jpeg, canvas_height,
                    canvas_width)
    except ImageError as e:
        return Read(error=str(e))
    except Exception as e:  # anything else still gets its row, never stops the block
        return Read(error=f"preprocess: {type(e).__name__}: {e}")
