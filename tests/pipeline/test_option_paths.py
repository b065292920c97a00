"""Paths mean what the user typed: relative to where a job started, or was submitted from."""
from __future__ import annotations

import os

import pytest

from pipeline.options import SUBMITTED_FROM, PathError, absolute


def test_relative_paths_are_the_starting_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(SUBMITTED_FROM, raising=False)
    assert absolute("runs", "--storage") == str(tmp_path / "runs")
    assert absolute("data/../data/shapes", "--images") == str(tmp_path / "data" / "shapes")
    assert absolute("/abs/x", "--images") == "/abs/x" and absolute("s3://b/k", "--images") == "s3://b/k"
    assert absolute(None, "--init") is None
    assert absolute("~/x", "--images") == os.path.expanduser("~/x")


def test_a_submitted_job_resolves_against_the_submitters_folder(tmp_path, monkeypatch):
    copy = tmp_path / "session" / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)  # where Ray runs a submitted job
    monkeypatch.setenv(SUBMITTED_FROM, "/home/me/project")  # jobs/submit.py says where it came from
    assert absolute("runs", "--storage") == "/home/me/project/runs"
    monkeypatch.delenv(SUBMITTED_FROM)  # a plain `ray job submit`: a relative path would be lost with the copy
    with pytest.raises(PathError, match="--storage runs is a relative path, and this job runs in Ray's temporary"):
        absolute("runs", "--storage")
    assert absolute("s3://bucket/runs", "--storage") == "s3://bucket/runs"


def test_a_hub_id_stays_a_hub_id_where_no_such_path_exists(tmp_path, monkeypatch):
    from pipeline.options import model_source

    monkeypatch.chdir(tmp_path)
    assert model_source("PekingU/rtdetr_v2_r18vd", "--init") == "PekingU/rtdetr_v2_r18vd"
    assert model_source("runs/x.pt", "--init") == str(tmp_path / "runs/x.pt")  # a missing file is a path
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert model_source("org/name", "--init") == str(tmp_path / "org/name")  # the local folder wins
