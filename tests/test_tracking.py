"""tracking: {mlflow: URI}: every finished cell becomes one MLflow run, through Tune's callback."""

import math

import pyarrow.parquet as pq
import pytest

from raddist.errors import ConfigError
from raddist.spec import parse
from raddist.sweep import run_sweep
from raddist.tracking import mlflow_metrics


def tiny(synthetic_data, tmp_path, tracking):
    return parse({
        "name": "tracked",
        "backbones": [{"name": "tiny_cnn", "weights": "random"}],
        "tasks": [{"name": "brain", "manifest": f"{synthetic_data}/brain_mri/manifest.parquet", "type": "multiclass",
                   "labels": ["label"], "classes": ["meningioma", "glioma", "pituitary"]}],
        "protocols": [{"name": "knn", "params": {"ks": [5, 10]}}, {"name": "logreg", "params": {"cs": [1.0]}}],
        "seeds": [0, 1], "bootstrap": 20, "tracking": tracking,
        "storage": {"output": str(tmp_path / "out"), "cache": str(tmp_path / "cache")}})


def test_metric_rows_become_finite_mlflow_metrics():
    rows = [{"metric": "auroc", "value": 0.8, "ci_low": 0.7, "ci_high": 0.9},
            {"metric": "auroc/pleural (effusion)", "value": 0.6, "ci_low": math.nan, "ci_high": math.inf}]
    assert mlflow_metrics(rows) == {"auroc": 0.8, "auroc.ci_low": 0.7, "auroc.ci_high": 0.9,
                                    "auroc.pleural _effusion_": 0.6}


def test_each_cell_is_one_mlflow_run_with_its_results(ray_local, synthetic_data, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a local file store, as the issue asks
    uri = (tmp_path / "mlruns").as_uri()
    summary = run_sweep(tiny(synthetic_data, tmp_path, {"mlflow": uri}), say=lambda line: None)
    assert summary["cells_done"] == 4

    runs = mlflow.MlflowClient(tracking_uri=uri).search_runs(
        [mlflow.MlflowClient(tracking_uri=uri).get_experiment_by_name("tracked").experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(summary_cells(tmp_path))
    results = pq.read_table(tmp_path / "out" / "results.parquet").to_pandas()
    for run in runs:
        assert run.info.status == "FINISHED"
        mine = results[results.cell_id == run.info.run_name]
        assert run.data.tags["protocol"] == mine.protocol.iloc[0] and run.data.tags["task"] == "brain"
        expected = {m.replace("/", "."): v for m, v in zip(mine.metric, mine.value) if not math.isnan(v)}
        assert {m: run.data.metrics[m] for m in expected} == pytest.approx(expected, abs=1e-12)
        assert len(expected) >= 4
    knn = [r for r in runs if r.data.tags["protocol"] == "knn"]
    assert {r.data.params["ks"] for r in knn} == {"[5, 10]"}


def summary_cells(tmp_path):
    return {row["cell_id"] for row in pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()}


def test_an_unusable_tracking_uri_is_refused_before_any_work(synthetic_data, tmp_path):
    with pytest.raises(ConfigError, match=r"^tracking.mlflow: bogus://nowhere cannot be used"):
        run_sweep(tiny(synthetic_data, tmp_path, {"mlflow": "bogus://nowhere"}), say=lambda line: None)
    assert not (tmp_path / "out" / "cells").exists()


def test_a_failing_store_loses_the_log_not_the_sweep(synthetic_data, tmp_path):
    from raddist.plan import make_plan
    from raddist.tracking import CellsToMLflow

    cell = make_plan(tiny(synthetic_data, tmp_path, {})).cells[0]
    callback = CellsToMLflow("file:///nowhere", "x", {cell.id: cell})
    callback.tags = {}

    def refuse(**kwargs):
        raise OSError("store down")
    callback.mlflow_util.start_run = refuse
    for _ in range(3):  # Tune would end the sweep on an exception from a callback
        callback.log_trial_result(1, None, {"cell_id": cell.id, "ok": True, "metric_rows": []})
    assert callback.failed == 3
