"""Requests and time to read a whole object from S3: model/uri.read_bytes (an input file: one
GET) against an input stream's read() (a GET per chunk), measured in the same run on a real
S3-compatible server (moto) on 127.0.0.1, behind the test suite's proxy, which counts GETs.

    .venv/bin/python -m bench.s3_reads
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pyarrow.fs as pafs

import storage as uris
from tests.flaky_s3 import FlakyProxy

SIZES = {"image 200 KB": 200_000, "photo 3 MB": 3_000_000, "checkpoint 45 MB": 45_000_000}


def start_moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
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


def measure(proxy: FlakyProxy, key: str, read) -> dict:
    proxy.reads.clear()
    started = time.perf_counter()
    data = read()
    return {"gets": proxy.reads[key], "seconds": round(time.perf_counter() - started, 3), "bytes": len(data)}


def main() -> None:
    moto, endpoint = start_moto()
    proxy = FlakyProxy(endpoint)
    os.environ.update(AWS_ENDPOINT_URL=proxy.endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_DEFAULT_REGION="us-east-1")
    try:
        fs = pafs.S3FileSystem(endpoint_override=proxy.endpoint, allow_bucket_creation=True, region="us-east-1")
        fs.create_dir("bench")
        results = {}
        for name, size in SIZES.items():
            key = f"bench/object-{size}"
            uris.write_bytes(f"s3://{key}", os.urandom(size))

            def stream() -> bytes:
                with fs.open_input_stream(key) as f:
                    return f.read()

            results[name] = {"read_bytes": measure(proxy, key, lambda: uris.read_bytes(f"s3://{key}")),
                             "input_stream": measure(proxy, key, stream)}
            baseline, ours = results[name]["input_stream"], results[name]["read_bytes"]
            print(f"{name}: {ours['gets']} GET / {baseline['gets']} GETs (input stream); "
                  f"{ours['seconds']:.3f} s / {baseline['seconds']:.3f} s", flush=True)
        print(json.dumps(results))
    finally:
        proxy.close()
        moto.terminate()
        moto.wait(timeout=10)


if __name__ == "__main__":
    main()
