"""The README's commands, copied in order into a fresh folder, run as written."""
from __future__ import annotations

import json
import os
import subprocess

from tests.readme import checkout_layout, readme_commands, shortened


def test_the_readme_commands_run_as_written(ray_cluster, tmp_path):
    """In a fresh folder with a checkout's layout, where the data, runs and outputs land. The jobs
    join the test process's Ray (as under RAY_ADDRESS), as the demo's test covers a job's own."""
    checkout_layout(tmp_path)
    env = dict(os.environ, RAY_ADDRESS=ray_cluster.get_runtime_context().gcs_address)
    commands = readme_commands()
    assert [c.split()[1] for c in commands] == [
        "jobs/make_synthetic.py", "jobs/train.py", "jobs/detect.py",
        "jobs/export.py", "jobs/detect.py", "jobs/evaluate.py",
        "jobs/make_synthetic.py", "jobs/detect.py", "jobs/evaluate.py",
        "jobs/reevaluate.py", "jobs/export.py", "jobs/detect.py"]
    summaries = []
    for command in commands:
        proc = subprocess.run(shortened(command), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (command, proc.stderr[-3000:])
        summaries.append(json.loads(proc.stdout.strip().splitlines()[-1]))  # each ends with its JSON line
    work = tmp_path / "work"  # everything the commands wrote
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "jobs", "work"]
    assert (work / "runs" / "shapes" / "best" / "checkpoint.pt").is_file()
    assert len(list((work / "runs" / "shapes" / "progress").iterdir())) == 1
    assert (work / "runs" / "shapes" / "curves.png").is_file()
    assert (work / "metrics" / "metrics.json").is_file() and (work / "history" / "report.md").is_file()
    assert (work / "detr.onnx").is_file()
    for predictions in ("predictions", "predictions-dfine", "predictions-onnx", "predictions-panoptic"):
        assert len(list((work / predictions).glob("part-*.parquet"))) == 1
    assert len(list((work / "predictions-panoptic" / "_panoptic").glob("*.png"))) == 8
    family = summaries[4]  # the shipped dfine-tiny, written as a transformers folder, detected with
    assert family["rows"] == 8 and family["batch_fill"] == 1.0
    assert (work / "dfine-folder" / "preprocessor_config.json").is_file()
    segment = summaries[8]  # the shipped stuff model: boxes, masks and panoptic segments scored
    assert segment["metrics"]["AP"] > 0 and segment["segm"]["metrics"]["AP"] > 0
    assert segment["panoptic"]["metrics"]["PQ"] > 0 and segment["panoptic"]["report"]["predicted"] == 8
