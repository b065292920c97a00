"""The entry points run as a user runs them and end with one JSON summary line."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from model import load_checkpoint

REPO = Path(__file__).resolve().parents[1]


def run_job(*args: str, timeout: int = 600) -> dict:
    proc = subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_demo(tmp_path):
    summary = run_job("jobs/demo.py", "--out", str(tmp_path), "--images", "2")
    assert summary["images"] == 2
    assert all(Path(p).stat().st_size > 0 for p in summary["pictures"])
    _, config = load_checkpoint(summary["checkpoint"])
    assert config.num_classes == 4
