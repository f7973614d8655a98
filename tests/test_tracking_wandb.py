"""tracking: {wandb: {project}}: every finished cell becomes one W&B run through Tune's W&B callback,
checked offline (WANDB_MODE=offline: the runs are files under WANDB_DIR)."""

import json
import os
import time

import pyarrow.parquet as pq
import pytest

from raddist.spec import parse
from raddist.sweep import run_sweep

wandb = pytest.importorskip("wandb", reason="wandb is not installed (pip install 'raddist[wandb]')")


@pytest.fixture(scope="module")
def offline_ray(tmp_path_factory):
    """A local Ray whose workers (and so Tune's W&B logging actors) see WANDB_MODE=offline."""
    import ray

    wandb_dir = tmp_path_factory.mktemp("wandb")
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(wandb_dir), "WANDB_SILENT": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": env})
    yield wandb_dir
    ray.shutdown()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_each_cell_is_one_offline_wandb_run(offline_ray, synthetic_data, tmp_path):
    spec = parse({
        "name": "tracked",
        "backbones": [{"name": "tiny_cnn", "weights": "random"}],
        "tasks": [{"name": "brain", "manifest": f"{synthetic_data}/brain_mri/manifest.parquet", "type": "multiclass",
                   "labels": ["label"], "classes": ["meningioma", "glioma", "pituitary"]}],
        "protocols": [{"name": "knn", "params": {"ks": [5, 10]}}, {"name": "logreg", "params": {"cs": [1.0]}}],
        "bootstrap": 20, "tracking": {"wandb": {"project": "raddist-test"}},
        "storage": {"output": str(tmp_path / "out"), "cache": str(tmp_path / "cache")}})
    summary = run_sweep(spec, say=lambda line: None)
    assert summary["cells_done"] == 2
    runs = sorted((offline_ray / "wandb").glob("offline-run-*"))
    cells = {p.parent.name: pq.read_table(p).to_pandas() for p in (tmp_path / "out" / "cells").glob("*/metrics.parquet")}
    assert len(runs) == 2 and {r.name.rsplit("-", 1)[1] for r in runs} == set(cells)  # run id = cell id
    for run in runs:
        # an offline run is one protobuf log (run-<id>.wandb); wandb 0.31 ships no reader for it, so its
        # strings are checked: config values, metric names and this cell's own numbers
        rows = cells[run.name.rsplit("-", 1)[1]]
        auroc = rows[rows.metric == "auroc"].iloc[0]
        texts = ['"tiny_cnn"', '"brain"', f'"{auroc.protocol}"', "auroc.ci_low", "auroc.ci_high",
                 json.dumps(float(auroc.value)), json.dumps(float(auroc.ci_low)), json.dumps(float(auroc.ci_high))]
        for _ in range(120):  # wandb's own service process writes the file after the logging actor has ended
            data = next(run.glob("run-*.wandb")).read_bytes()
            if all(t.encode() in data for t in texts):
                break
            time.sleep(0.5)
        assert [t for t in texts if t.encode() not in data] == [], run.name


def test_a_failing_wandb_loses_the_log_not_the_sweep(caplog):
    from raddist.plan import make_plan
    from raddist.tracking_wandb import CellsToWandb

    plan = make_plan(parse({
        "backbones": [{"name": "tiny_cnn", "weights": "random"}],
        "tasks": [{"name": "brain", "manifest": "/nowhere/manifest.parquet", "type": "multiclass", "labels": ["label"],
                   "classes": ["a", "b", "c"]}],
        "protocols": [{"name": "knn", "params": {"ks": [5]}}], "seeds": [0, 1]}))
    callback = CellsToWandb("raddist-test", "g", {c.id: c for c in plan.cells})

    def unreachable(*args, **kwargs):
        raise ConnectionError("api.wandb.ai unreachable")

    callback._start_logging_actor = unreachable  # what a W&B that cannot start does to the callback

    class Trial:
        local_path = "/tmp"

    for cell in plan.cells:
        callback.log_trial_result(1, Trial(), {"cell_id": cell.id, "ok": True, "metric_rows": []})
    assert callback.failed == 2
    warnings = [r.message for r in caplog.records if "W&B" in r.getMessage()]
    assert len(warnings) == 1  # said once, not once per cell


def test_wandb_spec_needs_a_project():
    with pytest.raises(Exception) as e:
        parse({"backbones": [{"name": "tiny_cnn"}], "tasks": [], "protocols": [], "tracking": {"wandb": {}}})
    assert "project" in str(e.value)
