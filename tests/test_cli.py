"""The real CLI end to end, each run in its own process with its own local Ray cluster."""

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import yaml


def _raddist(*args, env=None, check=True):
    proc = subprocess.run([sys.executable, "-m", "raddist.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"raddist {args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def tiny_config(synthetic_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    cfg = {
        "backbones": [{"name": "tiny_vit", "weights": "random"}],
        "tasks": [
            {"name": "chest", "manifest": f"{synthetic_data}/chest/manifest.parquet", "type": "multilabel",
             "labels": ["opacity", "effusion", "cardiomegaly", "nodule"]},
            {"name": "brain", "manifest": f"{synthetic_data}/brain_mri/manifest.parquet", "type": "multiclass",
             "labels": ["label"], "classes": ["meningioma", "glioma", "pituitary"]},
        ],
        "protocols": [{"name": "knn"}],
        "bootstrap": 50,
        "storage": {"cache": str(d / "cache")},
    }
    path = d / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path), d


def test_run_twice_second_run_embeds_nothing(tiny_config):
    config, d = tiny_config
    _raddist("run", config, "--output", str(d / "out1"))
    s1 = json.load(open(d / "out1" / "summary.json"))
    assert s1["cells_total"] == 2 and s1["cells_done"] == 2 and s1["cells_failed"] == 0
    assert s1["embedding_jobs_computed"] == 2 and s1["images_embedded"] > 100

    results = pq.read_table(d / "out1" / "results.parquet").to_pandas()
    assert set(results.columns) >= {"cell_id", "task", "backbone", "protocol", "metric", "value", "ci_low", "ci_high"}
    auroc = results[results.metric == "auroc"]
    assert len(auroc) == 2
    assert ((auroc.ci_low <= auroc.value) & (auroc.value <= auroc.ci_high)).all()
    report = (d / "out1" / "report.md").read_text()
    assert "## chest — auroc" in report and "## brain — auroc" in report and "## Cost" in report

    _raddist("run", config, "--output", str(d / "out2"))
    s2 = json.load(open(d / "out2" / "summary.json"))
    assert s2["embedding_jobs_computed"] == 0 and s2["embedding_jobs_cached"] == 2 and s2["cells_done"] == 2
    r2 = pq.read_table(d / "out2" / "results.parquet").to_pandas()
    assert sorted(r2.value.round(12)) == sorted(results.value.round(12))


def test_corrupt_file_is_an_input_error_and_every_cell_completes(synthetic_data, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synthetic_data, data)
    table = pq.read_table(data / "chest" / "manifest.parquet")
    victim = data / "chest" / table["uri"][0].as_py()
    victim.write_bytes(victim.read_bytes()[:300])  # truncated DICOM
    cfg = {
        "backbones": [{"name": "tiny_cnn", "weights": "random"}],
        "tasks": [{"name": "chest", "manifest": str(data / "chest" / "manifest.parquet"), "type": "multilabel",
                   "labels": ["opacity", "effusion"]}],
        "protocols": [{"name": "knn"}],
        "bootstrap": 20,
        "storage": {"cache": str(tmp_path / "cache")},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    _raddist("run", str(tmp_path / "c.yaml"), "--output", str(tmp_path / "out"))
    s = json.load(open(tmp_path / "out" / "summary.json"))
    assert s["input_errors"] == 1 and s["cells_done"] == s["cells_total"] == 1
    errors = pq.read_table(tmp_path / "out" / "errors.parquet").to_pylist()
    assert len(errors) == 1 and errors[0]["row"] == 0 and errors[0]["error"]
    assert "uri" not in errors[0] and victim.name not in json.dumps(errors)  # file names may carry patient ids
    shown = _raddist("errors", str(tmp_path / "out")).stdout
    assert errors[0]["sample_id"] in shown and victim.name not in shown
    revealed = _raddist("errors", str(tmp_path / "out"), "--reveal").stdout  # where the salt is: this machine
    assert victim.name in revealed


def test_bad_config_and_missing_manifest_fail_up_front(tmp_path):
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"backbones": [{"name": "tiny_vit", "wieghts": "random"}],
                                                       "tasks": [], "protocols": []}))
    proc = _raddist("run", str(tmp_path / "bad.yaml"), check=False)
    assert proc.returncode == 2 and "wieghts" in proc.stderr and "allowed" in proc.stderr

    cfg = {"backbones": [{"name": "tiny_vit", "weights": "random"}],
           "tasks": [{"name": "t", "manifest": str(tmp_path / "nope.parquet"), "type": "binary", "labels": ["y"]}],
           "protocols": [{"name": "knn"}]}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(cfg))
    proc = _raddist("run", str(tmp_path / "m.yaml"), "--output", str(tmp_path / "o"), check=False)
    assert proc.returncode == 2 and "nope.parquet" in proc.stderr
    assert not (tmp_path / "o" / "cells").exists()
