"""cluster.yaml is a valid Ray cluster launcher config (Ray's own schema and validation)."""
from __future__ import annotations

import copy

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from tests import REPO

CLUSTER_YAML = REPO / "cluster.yaml"


def load() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_passes_rays_schema():
    config = load()
    validate_config(prepare_config(copy.deepcopy(config)))
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    assert any(t["node_config"]["InstanceType"].startswith(("g5", "p4d", "p5")) for t in types.values())
    assert all(t["min_workers"] <= t["max_workers"] <= config["max_workers"]
               for name, t in types.items() if name != config["head_node_type"])
    assert any("make install" in c for c in config["setup_commands"])  # installed as README does


def test_a_typo_fails_validation():
    config = load()
    config["available_node_types"]["gpu_worker"]["max_wokers"] = 2
    with pytest.raises(Exception, match="Additional properties"):
        validate_config(prepare_config(config))


def test_every_node_runs_ray_from_the_venv_with_token_auth():
    config = load()
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = next(c for c in config[key] if "ray start" in c)
        assert "PATH=$HOME/detr-ray/.venv/bin:$PATH" in start  # a submitted job's `python` is the project's
        assert "RAY_AUTH_MODE=token" in start and "disabled" not in start
        assert "RAY_AUTH_TOKEN_PATH=$HOME/.config/detr-ray/auth_token" in start
    head = next(c for c in config["head_start_ray_commands"] if "ray start" in c)
    assert "--dashboard-host=127.0.0.1" in head  # the job API only through the launcher's tunnel
    assert config["file_mounts"]["/home/ubuntu/.config/detr-ray/auth_token"] == "~/.config/detr-ray/auth_token"


def test_training_nodes_share_a_placement_group_and_talk_over_efa():
    train = load()["available_node_types"]["gpu_train_node"]
    node = train["node_config"]
    assert node["Placement"]["GroupName"] and node["InstanceType"].startswith(("p4d", "p5"))
    assert [n["InterfaceType"] for n in node["NetworkInterfaces"]] == ["efa"]
    assert any("FI_PROVIDER=efa" in c for c in train["worker_setup_commands"])
