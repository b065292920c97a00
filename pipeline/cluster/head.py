"""A Ray head on this machine that can be stopped alone (`make head`, `make stop-head`).

`ray stop` stops every Ray of the user on the machine (another project's head, a test's
cluster). So `start` records what it started (records()): the head's ports, its Ray session
and its processes (processes() finds them again by the session's name and their parents);
`stop` ends those processes and no others. Its
ports are chosen (6379 and 8265 by default) and a taken one is reported, not shared; the head's
internal ports are free ones, so that two heads can run side by side.

    python -m pipeline.cluster.head start [--port 6379] [--dashboard-port 8265] [-- RAY START ARGS]
    python -m pipeline.cluster.head stop [--port 6379]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from .ports import STATE_API, answers, free_port

RECORDS_ENV = "DETR_RAY_HEADS"  # where the records are kept (default ~/.config/detr-ray/heads)
CURRENT_CLUSTER = Path("/tmp/ray/ray_current_cluster")  # Ray's record of the machine's latest head
SESSION = re.compile(r"session_\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d+_\d+")
DEFAULT_PORT, DEFAULT_DASHBOARD = 6379, 8265


class HeadError(RuntimeError):
    """Why a head could not be started or stopped, in one line."""


def records() -> Path:
    """The folder of the records, one JSON file per head, by GCS port."""
    return Path(os.environ.get(RECORDS_ENV) or Path.home() / ".config" / "detr-ray" / "heads")


def record_path(port: int) -> Path:
    return records() / f"{port}.json"


def start(port: int = DEFAULT_PORT, dashboard_port: int = DEFAULT_DASHBOARD, token_path: str | None = None,
          ray_args: list[str] | None = None) -> dict[str, Any]:
    """Start a token-locked head on 127.0.0.1 from this Python's environment (so a submitted job's
    `python` is the project's) and record it; returns the record."""
    if recorded_head(port) is not None:
        raise HeadError(f"the head `make head` started at port {port} is up: use it, or `make stop-head "
                        f"HEAD_PORT={port}` first")
    for name, value in (("--port", port), ("--dashboard-port", dashboard_port)):
        if answers("127.0.0.1", value):
            raise HeadError(f"port {value} ({name}) is taken, by another Ray head or another program: choose "
                            f"others, e.g. `make head HEAD_PORT={next_free(port)} DASHBOARD_PORT="
                            f"{next_free(dashboard_port)}`")
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", RAY_AUTH_MODE="token",
               **{STATE_API: f"http://127.0.0.1:{dashboard_port}"})  # its processes' state API: this head's
    if token_path:
        env["RAY_AUTH_TOKEN_PATH"] = token_path
    internal = [f"--{name}={free_port()}" for name in ("ray-client-server-port", "dashboard-agent-listen-port",
                                                       "dashboard-agent-grpc-port", "metrics-export-port",
                                                       "runtime-env-agent-port")]
    ray_args = list(ray_args or [])
    if temp_dir_of(ray_args) is None:
        # A folder of its own: Ray's record of "the current cluster" (ray_current_cluster), which a
        # submitted job's driver is pointed at, lives there; in the shared /tmp/ray any other Ray
        # started or stopped on the machine rewrites or deletes it, and the job joins another Ray.
        ray_args.append(f"--temp-dir={os.path.join(tempfile.gettempdir(), f'ray-head-{port}')}")
    command = [os.path.join(bin_dir, "ray"), "start", "--head", f"--port={port}", "--dashboard-host=127.0.0.1",
               f"--dashboard-port={dashboard_port}", *internal, *ray_args]
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise HeadError(f"ray start failed: {last_error(proc.stderr or proc.stdout)}")
    session = session_of_port(port)
    record = {"address": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dashboard_port}", "port": port,
              "dashboard_port": dashboard_port, "session": session,
              "temp_dir": temp_dir_of(ray_args),
              "pids": sorted(p.pid for p in processes(session, port)),
              "started": time.time()}
    records().mkdir(parents=True, exist_ok=True)
    record_path(port).write_text(json.dumps(record, indent=2))
    return record


def temp_dir_of(ray_args: list[str]) -> str | None:
    """The --temp-dir among `ray start` arguments (--temp-dir=X or --temp-dir X)."""
    for i, arg in enumerate(ray_args):
        if arg.startswith("--temp-dir="):
            return arg.split("=", 1)[1]
        if arg == "--temp-dir" and i + 1 < len(ray_args):
            return ray_args[i + 1]
    return None


def stop(port: int = DEFAULT_PORT, wait_s: float = 5.0) -> list[int]:
    """End the recorded head's processes (SIGTERM, then SIGKILL after wait_s) and its records;
    returns the pids ended. Other Rays on the machine are not touched."""
    path = record_path(port)
    if not path.exists():
        raise HeadError(f"no head started by `make head` is recorded at port {port} ({path})")
    record = json.loads(path.read_text())
    found = processes(record["session"], port)
    for p in found:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(found, timeout=wait_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    path.unlink()
    # Ray's record of the current cluster, if it names this head: left behind, a later local Ray
    # would take it for a running cluster
    if CURRENT_CLUSTER.exists() and CURRENT_CLUSTER.read_text().strip().endswith(f":{port}"):
        CURRENT_CLUSTER.unlink(missing_ok=True)
    return [p.pid for p in found]


def recorded_head(port: int | None = None) -> dict[str, Any] | None:
    """The record of a head `make head` started that is up (at `port`, else the default port's, else
    the only one recorded), or None."""
    if port is None:
        found = sorted(records().glob("*.json")) if records().exists() else []
        default = record_path(DEFAULT_PORT)
        candidates = [default] if default in found else found[:1] if len(found) == 1 else []
    else:
        candidates = [record_path(port)]
    for path in candidates:
        if path.exists():
            record = json.loads(path.read_text())
            if answers("127.0.0.1", int(record["port"])):
                return record
    return None


def next_free(port: int) -> int:
    """The port itself where nothing answers, else the next such."""
    return next(p for p in range(port, port + 100) if not answers("127.0.0.1", p))


def session_of_port(port: int) -> str:
    """The Ray session of the GCS listening on `port` (its command line names it)."""
    for p in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(p.info["cmdline"] or [])
        if "gcs_server" in cmdline and f"--gcs_server_port={port}" in cmdline:
            found = SESSION.search(cmdline)
            if found:
                return found.group(0)
    raise HeadError(f"ray start reported success, but no GCS of a Ray session listens on port {port}")


def processes(session: str, port: int) -> list[psutil.Process]:
    """The head's processes: those whose command line names its session (GCS, raylet, dashboard,
    log monitor, autoscaler), its client server (which names its GCS port instead), and all their
    children (workers, agents and the dashboard's modules, whose names Ray rewrites)."""
    roots = []
    for p in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(p.info["cmdline"] or [])
        client = "ray.util.client.server" in cmdline and re.search(rf"--address=\S+:{port}(\s|$)", cmdline)
        if p.pid != os.getpid() and (session in cmdline or client):
            roots.append(p)
    found = {p.pid: p for p in roots}
    for p in roots:
        try:
            found.update({c.pid: c for c in p.children(recursive=True)})
        except psutil.NoSuchProcess:
            pass
    return list(found.values())


def last_error(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line]
    return (errors or lines or ["(no output)"])[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("start", "stop"))
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="the head's GCS port (default 6379)")
    parser.add_argument("--dashboard-port", type=int, default=DEFAULT_DASHBOARD,
                        help="its dashboard and job API, on 127.0.0.1 (default 8265)")
    parser.add_argument("--token", help="the token file (default: RAY_AUTH_TOKEN_PATH)")
    argv = sys.argv[1:] if argv is None else argv
    ray_args = argv[argv.index("--") + 1:] if "--" in argv else []  # -- then more `ray start` arguments
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    try:
        if args.action == "start":
            record = start(args.port, args.dashboard_port, args.token or os.environ.get("RAY_AUTH_TOKEN_PATH"),
                           ray_args)
            print(f"head: up at {record['address']}, dashboard and job API {record['dashboard']} (session "
                  f"{record['session']}); `make stop-head HEAD_PORT={args.port}` stops it alone")
        else:
            pids = stop(args.port)
            print(f"head: stopped the head at port {args.port} ({len(pids)} processes); other Rays untouched")
    except HeadError as e:
        print(f"head: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
