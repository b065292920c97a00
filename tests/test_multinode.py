"""Multi-node behaviour on one host: Ray's own multi-node facility (ray.cluster_utils.Cluster)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .test_detection import checkpoint, write_pictures  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parents[1]


def run_script(*args: str) -> dict:
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "tests/multinode_detect.py", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("remove_node", [False, True], ids=["all-nodes", "node-removed-mid-run"])
def test_detection_across_nodes(checkpoint, tmp_path, remove_node):  # noqa: F811
    write_pictures(tmp_path / "images", 40, seed=4)
    summary = run_script(str(tmp_path / "images"), str(tmp_path / "out"), checkpoint,
                         *(["--remove-node"] if remove_node else []))
    assert summary["rows"] == summary["inputs"] == 40 and summary["duplicates"] == summary["missing"] == 0
    assert summary["errors"] == {}
    if remove_node:
        assert summary["removed"] == [summary["worker_nodes"][1]]
    else:
        assert set(summary["worker_nodes"]) <= set(summary["actor_nodes"])  # an actor on each worker node
