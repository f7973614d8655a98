import subprocess
import sys

import pytest

from raddist import config as config_lib, spec as spec_lib
from raddist.plan import make_plan


def _spec(**over):
    d = {
        "backbones": [{"name": "tiny_vit", "weights": "random"}, {"name": "tiny_cnn", "weights": "random"}],
        "tasks": [
            {"name": "chest", "manifest": "/d/c.parquet", "type": "multilabel", "labels": ["a", "b"]},
            {"name": "brain", "manifest": "/d/b.parquet", "type": "multiclass", "labels": ["label"], "classes": ["x", "y", "z"]},
        ],
        "protocols": [{"name": "knn"}],
        "seeds": [0, 1],
    }
    d.update(over)
    return spec_lib.parse(d)


def test_cells_are_the_product_and_jobs_are_shared():
    plan = make_plan(_spec())
    assert len(plan.cells) == 2 * 2 * 1 * 2
    assert len(plan.jobs) == 2 * 2  # one per backbone × task, shared by seeds and protocols
    assert len({c.id for c in plan.cells}) == len(plan.cells)
    assert all(c.embedding_job in plan.jobs for c in plan.cells)


def test_ids_are_stable_and_track_content():
    a, b = make_plan(_spec()), make_plan(_spec())
    assert [c.id for c in a.cells] == [c.id for c in b.cells]
    c = make_plan(_spec(seeds=[0, 2]))
    assert a.cells[0].id == c.cells[0].id and a.cells[1].id != c.cells[1].id
    # a different preprocessing contract is a different embedding job
    d = make_plan(_spec(image_size=128))
    assert set(d.jobs).isdisjoint(a.jobs)


def test_protocols_only_apply_to_their_task_types():
    plan = make_plan(_spec(protocols=[{"name": "knn"}, {"name": "mlknn"}], seeds=[0]))
    ml = [c for c in plan.cells if c.protocol == "mlknn"]
    assert ml and all(c.task.type == "multilabel" for c in ml)


def test_plan_json_cli(tmp_path):
    import json

    import yaml

    cfg = tmp_path / "s.yaml"
    cfg.write_text(yaml.safe_dump(_spec().model_dump(mode="json")))
    out = subprocess.run([sys.executable, "-m", "raddist.cli", "plan", str(cfg), "--json"],
                         capture_output=True, text=True, check=True).stdout
    s = json.loads(out)
    assert s == {"cells": 8, "embedding_jobs": 4, "backbones": ["tiny_vit", "tiny_cnn"],
                 "tasks": ["chest", "brain"], "protocols": ["knn"]}


def test_paper_grid_has_at_least_200_cells():
    spec = config_lib.load("paper")
    plan = make_plan(spec)
    assert len(spec.backbones) == 14
    assert len(plan.cells) >= 200


def test_protocol_restricted_to_some_backbones():
    plan = make_plan(_spec(protocols=[{"name": "knn"}, {"name": "lora", "backbones": ["tiny_vit"]}], seeds=[0]))
    lora = [c for c in plan.cells if c.protocol == "lora"]
    assert len(lora) == 2 and {c.backbone.label for c in lora} == {"tiny_vit"}
    assert all(c.embedding_job is None for c in lora)
    from raddist.errors import ConfigError

    plan = make_plan(_spec(protocols=[{"name": "knn", "tasks": ["brain"]}], seeds=[0]))
    assert {c.task.name for c in plan.cells} == {"brain"} and len(plan.jobs) == 2
    with pytest.raises(ConfigError, match=r"protocols.0.tasks: unknown task\(s\) \['lung'\]"):
        _spec(protocols=[{"name": "knn", "tasks": ["lung"]}])
    with pytest.raises(ConfigError, match=r"protocols.1.backbones: unknown backbone\(s\) \['vit_x'\]"):
        _spec(protocols=[{"name": "knn"}, {"name": "lora", "backbones": ["vit_x"]}])
