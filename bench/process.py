"""A job run as a user runs it, in a fresh process, with its wall time and peak memory."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


# Starts the command from a small process and writes its peak RSS and exit code: Linux counts
# in a child's peak RSS the memory of the process it was forked from, so a child of a large
# benchmark process would report at least the benchmark's own size.
LAUNCHER = ("import os, subprocess, sys; p = subprocess.Popen(sys.argv[2:]); _, s, u = os.wait4(p.pid, 0); "
            "open(sys.argv[1], 'w').write(f'{u.ru_maxrss} {os.waitstatus_to_exitcode(s)}')")


def run_measured(command: list[str]) -> dict[str, Any]:
    """Wall seconds, peak resident memory (MiB, from wait4 in a small launcher), exit code and
    the last line of stdout parsed as JSON (the jobs' summary line)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.NamedTemporaryFile("r") as measured:
        subprocess.run([sys.executable, "-c", LAUNCHER, measured.name, *command], cwd=REPO, stdout=out,
                       stderr=subprocess.DEVNULL, check=True)
        seconds = time.perf_counter() - started
        peak_kib, exit_code = (int(v) for v in Path(measured.name).read_text().split())
        out.seek(0)
        lines = out.read().strip().splitlines()
    return {"seconds": seconds, "peak_mib": peak_kib / 1024, "exit_code": exit_code,
            "summary": json.loads(lines[-1]) if lines else None}
