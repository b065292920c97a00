"""Requests and time to read a whole object from S3: storage.read_bytes (an input file: one
GET) against an input stream's read() (a GET per chunk), measured in the same run on a real
S3-compatible server (moto) on 127.0.0.1, whose request recorder counts the GETs.

    .venv/bin/python -m bench.s3_reads [--small]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable

import pyarrow.fs as pafs

import storage as uris

SIZES = {"image 200 KB": 200_000, "photo 3 MB": 3_000_000, "checkpoint 45 MB": 45_000_000}


def start_moto(recording: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            env={**os.environ, "MOTO_RECORDER_FILEPATH": recording},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            return proc, endpoint
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("moto server did not start")


def recorder(endpoint: str, action: str) -> str:
    """moto's request recorder: reset-recording, start-recording, stop-recording, download-recording."""
    with urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/recorder/{action}", method="POST")) as r:
        return r.read().decode()


def measure(endpoint: str, key: str, read: Callable[[], bytes]) -> dict:
    """The GETs of `key` that read() sends, and its time (the recording on only around it)."""
    recorder(endpoint, "reset-recording")
    recorder(endpoint, "start-recording")
    started = time.perf_counter()
    data = read()
    seconds = time.perf_counter() - started
    recorder(endpoint, "stop-recording")
    requests = [json.loads(line) for line in recorder(endpoint, "download-recording").splitlines() if line]
    gets = sum(r["method"] == "GET" and urllib.parse.urlparse(r["url"]).path == f"/{key}" for r in requests)
    return {"gets": gets, "seconds": round(seconds, 3), "bytes": len(data)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="the 200 KB object alone (seconds)")
    args = parser.parse_args()
    folder = tempfile.mkdtemp()
    moto, endpoint = start_moto(os.path.join(folder, "recording"))
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_DEFAULT_REGION="us-east-1")
    try:
        fs = pafs.S3FileSystem(endpoint_override=endpoint, allow_bucket_creation=True, region="us-east-1")
        fs.create_dir("bench")
        results = {}
        for name, size in list(SIZES.items())[:1 if args.small else None]:
            key = f"bench/object-{size}"
            uris.write_bytes(f"s3://{key}", os.urandom(size))

            def stream() -> bytes:
                with fs.open_input_stream(key) as f:
                    return f.read()

            results[name] = {"read_bytes": measure(endpoint, key, lambda: uris.read_bytes(f"s3://{key}")),
                             "input_stream": measure(endpoint, key, stream)}
            baseline, ours = results[name]["input_stream"], results[name]["read_bytes"]
            print(f"{name}: {ours['gets']} GET / {baseline['gets']} GETs (input stream); "
                  f"{ours['seconds']:.3f} s / {baseline['seconds']:.3f} s", flush=True)
        print(json.dumps(results))
    finally:
        moto.terminate()
        moto.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
