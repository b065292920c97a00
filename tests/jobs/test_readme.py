"""The README's commands, copied in order into a fresh folder, run as written."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests import REPO

# Flags the README also shows, that make a run take seconds: later flags win over earlier ones.
# The export takes the shipped checkpoint instead of the one trained here for an epoch: the
# export's check refuses, rightly, a model so little trained that its two-stage queries tie
# within rounding (ONNX Runtime and PyTorch may then pick different ones).
SHORTER = {"make_synthetic.py": ["--train", "24", "--val", "8"], "train.py": ["--epochs", "1", "--eval-every", "1"],
           "export.py": ["--checkpoint", "checkpoints/detr-tiny-shapes.pt"]}
# The family's export writes the shipped dfine-tiny as a transformers folder, as written
KEPT_AS_WRITTEN = ("--output dfine-folder",)


def readme_commands() -> list[str]:
    """The README's local job commands, in order: every `.venv/bin/python jobs/...` line of its
    bash blocks (continuations joined, comments dropped), but those that need a bucket or a
    cluster (s3://, placeholders, jobs/submit.py: tests/cluster)."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    lines = [line.split("#", 1)[0].strip() for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    return [" ".join(line.split()) for line in lines if line.startswith(".venv/bin/python jobs/")
            and not any(s in line for s in ("s3://", "...", "jobs/submit.py"))]


def test_the_readme_commands_run_as_written(ray_cluster, tmp_path):
    """In a fresh folder with a checkout's layout, where the data, runs and outputs land. The jobs
    join the test process's Ray (as under RAY_ADDRESS), as the demo's test covers a job's own."""
    for part in ("jobs", "checkpoints"):
        (tmp_path / part).symlink_to(REPO / part)
    env = dict(os.environ, RAY_ADDRESS=ray_cluster.get_runtime_context().gcs_address)
    commands = readme_commands()
    assert [c.split()[1] for c in commands] == [
        "jobs/make_synthetic.py", "jobs/train.py", "jobs/detect.py",
        "jobs/export.py", "jobs/detect.py", "jobs/evaluate.py",
        "jobs/make_synthetic.py", "jobs/detect.py", "jobs/evaluate.py",
        "jobs/reevaluate.py", "jobs/export.py", "jobs/detect.py"]
    summaries = []
    for command in commands:
        args = command.split()
        args[0] = sys.executable
        if not any(kept in command for kept in KEPT_AS_WRITTEN):
            args += SHORTER.get(Path(args[1]).name, [])
        proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (command, proc.stderr[-3000:])
        summaries.append(json.loads(proc.stdout.strip().splitlines()[-1]))  # each ends with its JSON line
    assert (tmp_path / "runs" / "shapes" / "best" / "checkpoint.pt").is_file()
    assert len(list((tmp_path / "runs" / "shapes" / "progress").iterdir())) == 1
    assert (tmp_path / "runs" / "shapes" / "curves.png").is_file()
    assert (tmp_path / "metrics" / "metrics.json").is_file() and (tmp_path / "history" / "report.md").is_file()
    assert (tmp_path / "detr.onnx").is_file()
    for predictions in ("predictions", "predictions-dfine", "predictions-onnx", "predictions-panoptic"):
        assert len(list((tmp_path / predictions).glob("part-*.parquet"))) == 1
    assert len(list((tmp_path / "predictions-panoptic" / "_panoptic").glob("*.png"))) == 8
    family = summaries[4]  # the shipped dfine-tiny, written as a transformers folder, detected with
    assert family["rows"] == 8 and family["batch_fill"] == 1.0
    assert (tmp_path / "dfine-folder" / "preprocessor_config.json").is_file()
    segment = summaries[8]  # the shipped stuff model: boxes, masks and panoptic segments scored
    assert segment["metrics"]["AP"] > 0 and segment["segm"]["metrics"]["AP"] > 0
    assert segment["panoptic"]["metrics"]["PQ"] > 0 and segment["panoptic"]["report"]["predicted"] == 8
