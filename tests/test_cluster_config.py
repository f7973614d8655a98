"""cluster.yaml passes Ray's own autoscaler validation, as `ray up` runs it."""

import copy
from pathlib import Path

import pytest
import yaml

CONFIG = Path(__file__).resolve().parent.parent / "cluster.yaml"


def _validate(config):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


def test_cluster_yaml_is_valid_and_declares_gpus():
    config = yaml.safe_load(CONFIG.read_text())
    _validate(config)
    types = config["available_node_types"]
    gpu_types = [t for t in types.values() if t["resources"].get("GPU", 0) > 0]
    assert len(gpu_types) >= 2 and all(t["max_workers"] > t["min_workers"] == 0 for t in gpu_types)
    assert types[config["head_node_type"]]["resources"]["CPU"] == 0  # the head only drives
    assert config["idle_timeout_minutes"] > 0
    assert any("pip install" in c and "raddist" in c for c in config["setup_commands"])
    assert ".venv" in config["rsync_exclude"]


def test_validation_rejects_a_broken_config():
    config = yaml.safe_load(CONFIG.read_text())
    config["available_node_types"]["gpu_a10g"]["max_workers"] = "many"
    with pytest.raises(Exception):
        _validate(config)
