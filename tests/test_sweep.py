"""The sweep in this process on a local Ray cluster: cells as Tune trials, resuming only what is
unfinished, and what it refuses before any work."""

import json
import os
import shutil

import pyarrow.parquet as pq
import pytest

from raddist import provenance
from raddist.errors import ConfigError
from raddist.plan import make_plan
from raddist.config import load
from raddist.spec import parse
from raddist.sweep import run_sweep
from raddist.trials import JobStates, ReadyCells, batches, trial_resources


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
    lost = provenance.bind(make_plan(spec), "cpu")[0].cells[1]  # the run's cells: content ids
    shutil.rmtree(tmp_path / "out" / "cells" / lost.id)  # as if its node died before it finished
    again = run_sweep(spec, say=lines.append)
    assert again["cells_run_now"] == 1 and again["cells_done"] == 4 and again["embedding_jobs_computed"] == 0
    rerun = pq.read_table(tmp_path / "out" / "results.parquet").to_pandas()
    key = ["cell_id", "metric"]
    assert rerun.sort_values(key)["value"].round(12).tolist() == results.sort_values(key)["value"].round(12).tolist()
    progress = json.loads((tmp_path / "out" / "progress.json").read_text())
    assert progress["state"] == "finished" and progress["cells"]["done_now"] == 1 and progress["cells"]["total"] == 4
    assert progress["embedding_jobs"] == {"total": 1, "done": 1, "failed": 0}


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


def test_trainable_cells_hold_no_gpu_themselves(synthetic_data, tmp_path):
    """The searcher's config alone decides a trial's resources (nothing else is pickled per trial)."""
    spec = tiny(synthetic_data, tmp_path, resources={"gpus_per_cell": 0.5})
    cell = make_plan(spec).cells[0]
    lora = type(cell)(**{**cell.__dict__, "id": "lora-cell", "protocol": "lora", "embedding_job": None})
    jobs = JobStates()
    jobs.done(cell.embedding_job, "key")
    searcher = ReadyCells(batches([cell, lora], 8), jobs)
    configs = [searcher.suggest("t1"), searcher.suggest("t2")]
    res = spec.resources
    assert [trial_resources(c["trains"], res.cpus_per_cell, res.gpus_per_cell).bundles for c in configs] == \
        [[{"CPU": 0.5, "GPU": 0.5}], [{"CPU": 0.5}]]
    assert [c["cells"] for c in configs] == [[cell.id], ["lora-cell"]]


def test_two_salts_share_the_cache_but_never_an_output(ray_local, synthetic_data, tmp_path, monkeypatch):
    """Cache keys hash the raw manifest, not pseudonyms: another deployment salt computes nothing
    again. Its pseudonyms differ, so it may not write into an output that the first salt wrote."""
    monkeypatch.setenv("RADDIST_SALT", "salt-one")
    first = run_sweep(tiny(synthetic_data, tmp_path), say=lambda line: None)
    monkeypatch.setenv("RADDIST_SALT", "salt-two")
    other = tiny(synthetic_data, tmp_path, storage={"output": str(tmp_path / "out2"), "cache": str(tmp_path / "cache")})
    second = run_sweep(other, say=lambda line: None)
    assert first["embedding_jobs_computed"] == 1 and second["embedding_jobs_computed"] == 0
    keys = [json.loads((tmp_path / d / "embedding_jobs.json").read_text())[0]["key"] for d in ("out", "out2")]
    assert keys[0] == keys[1]
    ids = [set(pq.read_table(tmp_path / d / "predictions.parquet")["sample_id"].to_pylist()) for d in ("out", "out2")]
    assert not ids[0] & ids[1]  # the pseudonyms differ
    with pytest.raises(ConfigError, match="written with another salt"):
        run_sweep(tiny(synthetic_data, tmp_path), say=lambda line: None)  # salt-two into salt-one's output


def test_a_job_with_too_many_unreadable_images_fails_its_cells_and_caches_nothing(ray_local, synthetic_data, tmp_path):
    import pyarrow as pa

    from raddist.data import manifest as manifest_lib

    table = manifest_lib.load(f"{synthetic_data}/brain_mri/manifest.parquet")  # uris resolved: absolute
    uris = table["uri"].to_pylist()
    bad = len(uris) // 5  # 20% of the rows point at files that do not exist
    uris[:bad] = [f"{tmp_path}/missing/{i}.png" for i in range(bad)]
    pq.write_table(table.set_column(table.column_names.index("uri"), "uri", pa.array(uris)), tmp_path / "m.parquet")
    spec = parse({**tiny(synthetic_data, tmp_path).model_dump(exclude_none=True),
                  "tasks": [{"name": "brain", "manifest": str(tmp_path / "m.parquet"), "type": "multiclass",
                             "labels": ["label"], "classes": ["meningioma", "glioma", "pituitary"]}]})
    lines = []
    summary = run_sweep(spec, say=lines.append)
    assert summary["embedding_jobs_failed"] == 1 and summary["cells_failed"] == summary["cells_total"] == 4
    reason = f"{bad} of {len(uris)} images could not be decoded"
    assert any(reason in line and "above max_input_error_rate 5%" in line for line in lines)
    assert not list((tmp_path / "cache").glob("features/*/meta.json"))
    failed = json.loads(next((tmp_path / "out" / "cells").glob("*/failed.json")).read_text())
    assert failed["error"].startswith(f"embedding job failed: {reason}")


def test_compare_tests_the_numbers_the_results_report(ray_local, synthetic_data, tmp_path):
    from raddist.compare import compare_backbones

    spec = tiny(synthetic_data, tmp_path, backbones=[{"name": "tiny_cnn", "weights": "random"},
                                                    {"name": "tiny_vit", "weights": "random"}], seeds=[0])
    run_sweep(spec, say=lambda line: None)
    results = pq.read_table(tmp_path / "out" / "results.parquet").to_pandas()
    preds = pq.read_table(tmp_path / "out" / "predictions.parquet").to_pandas()
    table = compare_backbones(preds, "tiny_cnn", "tiny_vit", n_boot=50, keys=("task", "protocol", "params", "seed"))
    boot = table[table["test"] == "bootstrap"]
    assert len(boot) == 2 * 4  # knn and logreg, four metrics each
    for _, row in boot.iterrows():
        for side, backbone in (("a", "tiny_cnn"), ("b", "tiny_vit")):
            [value] = results[(results.backbone == backbone) & (results.protocol == row["protocol"])
                              & (results.metric == row["metric"])]["value"]
            assert row[side] == pytest.approx(value, abs=1e-12)
