"""The sweep in this process on a local Ray cluster: cells as Tune trials, resuming only what is
unfinished, and what it refuses before any work."""

import json
import os
import shutil

import pyarrow.parquet as pq
import pytest

from raddist import storage
from raddist.errors import ConfigError
from raddist.plan import make_plan
from raddist.spec import ResourcesSpec, load, parse
from raddist.sweep import _trial_resources, run_sweep, train_gpu


def tiny(synthetic_data, tmp_path, **extra):
    return parse({
        "backbones": [{"name": "tiny_cnn", "weights": "random"}],
        "tasks": [{"name": "brain", "manifest": f"{synthetic_data}/brain_mri/manifest.parquet", "type": "multiclass",
                   "labels": ["label"], "classes": ["meningioma", "glioma", "pituitary"]}],
        "protocols": [{"name": "knn", "params": {"ks": [5, 10]}}, {"name": "logreg", "params": {"cs": [1.0]}}],
        "seeds": [0, 1], "bootstrap": 20,
        "storage": {"output": str(tmp_path / "out"), "cache": str(tmp_path / "cache")}, **extra})


def test_a_rerun_runs_only_the_unfinished_cells_to_the_same_results(ray_local, synthetic_data, tmp_path):
    spec = tiny(synthetic_data, tmp_path)
    lines = []
    first = run_sweep(spec, say=lines.append)
    assert first["cells_total"] == first["cells_done"] == first["cells_run_now"] == 4 and first["cells_failed"] == 0
    assert any(line.startswith("plan: 4 cells, 1 embedding jobs") for line in lines)
    results = pq.read_table(tmp_path / "out" / "results.parquet").to_pandas()
    lost = make_plan(spec).cells[1]
    shutil.rmtree(tmp_path / "out" / "cells" / lost.id)  # as if its node died before it finished
    again = run_sweep(spec, say=lines.append)
    assert again["cells_run_now"] == 1 and again["cells_done"] == 4 and again["embedding_jobs_computed"] == 0
    rerun = pq.read_table(tmp_path / "out" / "results.parquet").to_pandas()
    key = ["cell_id", "metric"]
    assert rerun.sort_values(key)["value"].round(12).tolist() == results.sort_values(key)["value"].round(12).tolist()
    progress = json.loads((tmp_path / "out" / "progress.json").read_text())
    assert progress["cells_done_now"] == 1 and progress["cells_total"] == 4


def test_an_unset_variable_is_refused_before_ray_starts(synthetic_data, tmp_path, monkeypatch):
    def no_ray():
        raise AssertionError("Ray was started")

    monkeypatch.setattr("raddist.sweep.ensure_ray", no_ray)
    monkeypatch.delenv("RADDIST_UNSET_OUT", raising=False)
    spec = tiny(synthetic_data, tmp_path)
    config = tmp_path / "c.yaml"
    data = spec.model_dump(exclude_none=True)
    data["storage"]["output"] = "${RADDIST_UNSET_OUT}/run"
    import yaml

    config.write_text(yaml.safe_dump(data))
    loaded = load(str(config))
    assert loaded.unset_vars == [("storage.output", "RADDIST_UNSET_OUT")]
    with pytest.raises(ConfigError, match=r"storage.output: \$\{RADDIST_UNSET_OUT\} is not set"):
        run_sweep(loaded)
    assert not os.path.exists("${RADDIST_UNSET_OUT}")
    assert load(str(config), {"storage.output": str(tmp_path / "o")}).unset_vars == []  # --output replaces it


def test_trainable_cells_hold_no_gpu_themselves_and_the_spec_decides_their_workers(synthetic_data, tmp_path):
    spec = tiny(synthetic_data, tmp_path, resources={"gpus_per_cell": 0.5})
    cell = make_plan(spec).cells[0]
    assert _trial_resources(cell, spec.resources).bundles == [{"CPU": 0.5, "GPU": 0.5}]
    lora = type(cell)(**{**cell.__dict__, "protocol": "lora", "embedding_job": None})
    assert _trial_resources(lora, spec.resources).bundles == [{"CPU": 0.5}]
    assert train_gpu(ResourcesSpec(train_use_gpu=True)) is True
    assert train_gpu(ResourcesSpec(train_use_gpu=False)) is False
    assert storage.normalize(spec.storage.output) == str(tmp_path / "out")
