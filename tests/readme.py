"""The README's local job commands, as the tests run them (tests/jobs/test_readme.py runs them all
in order; tests/cluster/test_submit.py runs the first ones beside a head, directly and submitted)."""
from __future__ import annotations

import re
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
KEPT_AS_WRITTEN = ("--output work/dfine-folder",)


def readme_commands() -> list[str]:
    """The README's local job commands, in order: every `.venv/bin/python jobs/...` line of its
    bash blocks (continuations joined, comments dropped), but those that need a bucket or a
    cluster (s3://, placeholders, jobs/submit.py: tests/cluster)."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    lines = [line.split("#", 1)[0].strip() for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    return [" ".join(line.split()) for line in lines if line.startswith(".venv/bin/python jobs/")
            and not any(s in line for s in ("s3://", "...", "jobs/submit.py"))]


def shortened(command: str) -> list[str]:
    """A README command as the tests run it: this interpreter, and the SHORTER flags."""
    args = command.split()
    args[0] = sys.executable
    if not any(kept in command for kept in KEPT_AS_WRITTEN):
        args += SHORTER.get(Path(args[1]).name, [])
    return args


def checkout_layout(folder: Path) -> None:
    """A fresh folder with a checkout's layout: the README's commands run in it as written."""
    for part in ("jobs", "checkpoints"):
        (folder / part).symlink_to(REPO / part)
