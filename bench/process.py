"""A job run as a user runs it, in a fresh process, with its wall time and peak memory."""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def run_measured(command: list[str]) -> dict[str, Any]:
    """Wall seconds, peak resident memory (MiB, from wait4), exit code and the last line of
    stdout parsed as JSON (the jobs' summary line)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        out.seek(0)
        lines = out.read().strip().splitlines()
    return {"seconds": seconds, "peak_mib": usage.ru_maxrss / 1024, "exit_code": os.waitstatus_to_exitcode(status),
            "summary": json.loads(lines[-1]) if lines else None}
