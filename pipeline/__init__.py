"""Ray Data / Ray Train building blocks, a subpackage per stage (training, detection,
evaluation) and, here at the top, what the stages share: COCO reading (coco.py), the
predictions table (predictions.py), the one decoder (images.py), instance masks (masks.py) and
panoptic PNGs (panoptic.py), the jobs' options (options.py: each defined once on its stage's
config dataclass, and what relative paths mean), progress lines (progress.py), the synthetic
dataset (synthetic.py), and Ray for the jobs (cluster/). The command lines are jobs/."""
from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def exports(package: str, module_of: dict[str, str]) -> Callable[[str], Any]:
    """A package's __getattr__ that imports its public names on first use, so that a task which
    needs one stage of it (a read task of bulk detection, the scoring job) does not import the
    others (the model actor, and torch with it)."""
    def __getattr__(name: str) -> Any:
        if name not in module_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module_of[name]}"), name)

    return __getattr__
