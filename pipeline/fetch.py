"""The CPU stage of bulk detection: read each image's encoded bytes and its header.

Read tasks pass the file's bytes on (a JPEG is 10-20x smaller than its pixels) with the
displayed size, EXIF orientation and canvas read from the header; the model actor decodes
(nvJPEG on a GPU). Reads run on a thread pool (object stores answer in tens of ms) through
one filesystem object per bucket and worker process (model/uri.py), and transient failures
(throttling, resets, timeouts) are retried with backoff; what still fails becomes that row's error.
"""
from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa

from model import uri as uris
from model.contract import InputContract

from .images import ImageError, probe

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


def fetch(rows: pa.Table, contract: InputContract, max_pixels: int, attempts: int = ATTEMPTS) -> pa.Table:
    """path, image_id, shard -> the same rows with bytes, header facts, canvas (by the contract)
    and error."""
    paths = rows["path"].to_pylist()
    with ThreadPoolExecutor(min(READ_THREADS, max(1, len(paths)))) as pool:
        fetched = list(pool.map(lambda p: _fetch_one(p, contract, max_pixels, attempts), paths))
    columns = dict(zip(COLUMNS.names[3:], zip(*fetched))) if fetched else {n: [] for n in COLUMNS.names[3:]}
    return pa.table({"path": rows["path"].cast(pa.large_string()), "image_id": rows["image_id"],
                     "shard": rows["shard"], **{k: pa.array(list(v), COLUMNS.field(k).type)
                                                 for k, v in columns.items()}}, schema=COLUMNS)


def _fetch_one(path: str, contract: InputContract, max_pixels: int, attempts: int) -> tuple:
    try:
        data = read_bytes(path, attempts)
        header = probe(data, max_pixels)
        canvas = contract.canvas_of(header.height, header.width)
        return data, header.width, header.height, header.orientation, header.plain_jpeg, *canvas, None
    except ImageError as e:
        return b"", None, None, None, None, None, None, str(e)
    except Exception as e:  # anything else still gets its row, never stops the block
        return b"", None, None, None, None, None, None, f"preprocess: {type(e).__name__}: {e}"
