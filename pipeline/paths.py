"""Paths mean what the user typed: a relative path is relative to the folder a job was started
from, on the driver, before anything runs.

A job run directly resolves against its working directory. A job submitted with jobs/submit.py
resolves against the folder it was submitted from (the submission says which, in
SUBMITTED_FROM), so a run written to `runs` lands in that folder's `runs`, not in Ray's temporary
copy of the working dir. A job Ray runs from such a copy without saying where it was submitted
from (a plain `ray job submit --working-dir .`) refuses relative paths with one line: they
would be written into that copy and lost with it. URIs (s3://, file://) are left as they are.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

from model.families import HUB_ID

SUBMITTED_FROM = "DETR_SUBMITTED_FROM"  # set by jobs/submit.py in the job's environment


class PathError(ValueError):
    """A path a job cannot take as given, said in one line."""


def in_ray_working_dir_copy(cwd: str | None = None) -> bool:
    """Whether this process runs in Ray's copy of a job's uploaded working dir."""
    parts = os.path.normpath(cwd or os.getcwd()).split(os.sep)
    return "runtime_resources" in parts and "working_dir_files" in parts


def absolute(value: str | None, flag: str) -> str | None:
    """value as an absolute path (or the URI itself), resolved as the module docstring says."""
    if value is None or "://" in value:
        return value
    value = os.path.expanduser(value)
    if os.path.isabs(value):
        return value
    base = os.environ.get(SUBMITTED_FROM)
    if base is None:
        if in_ray_working_dir_copy():
            raise PathError(f"{flag} {value} is a relative path, and this job runs in Ray's temporary copy of the "
                            "working dir, where it would be lost: give an absolute path or s3:// URI, or submit "
                            "with jobs/submit.py, which resolves relative paths against the folder you submit from")
        base = os.getcwd()
    return os.path.normpath(os.path.join(base, value))


def model_source(value: str | None, flag: str) -> str | None:
    """A checkpoint or model folder as absolute() makes it, or a hub model id (org/name) kept as
    it is where no such local path exists."""
    if value and HUB_ID.fullmatch(value):
        base = os.environ.get(SUBMITTED_FROM) or os.getcwd()
        if not os.path.exists(os.path.join(base, value)):
            return value
    return absolute(value, flag)


MODEL_FIELDS = ("checkpoint", "init")  # the fields that name a model: a path, a URI or a hub id


def with_absolute_paths(config: Any, flags: dict[str, str]) -> Any:
    """A dataclass config with its path fields (field name -> the flag that sets it) absolute."""
    return dataclasses.replace(config, **{
        name: (model_source if name in MODEL_FIELDS else absolute)(getattr(config, name), flag)
        for name, flag in flags.items()})
