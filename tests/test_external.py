"""External validation: the spec's checks, the plan's jobs, the cell ids, and a cell scored on another
site whose labels it never reads before scoring (raddist.external)."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raddist import external, provenance, spec as spec_lib
from raddist.cells.run import CellContext, evaluate_cell
from raddist.embed.cache import EmbeddingCache, block_table, write_part
from raddist.errors import ConfigError
from raddist.plan import make_plan
from raddist.spec import BackboneSpec, ResourcesSpec, TaskSpec
from tests.protocols.synthetic import blob_inputs

SALT = "external-test-salt"


def _task(**over):
    return {"name": "tb", "manifest": "/d/tb.parquet", "type": "binary", "labels": ["tb"], **over}


def _spec(tasks, protocols=({"name": "knn"},)):
    return spec_lib.parse({"backbones": [{"name": "tiny_vit", "weights": "random"}, {"name": "tiny_cnn", "weights": "random"}],
                           "tasks": tasks, "protocols": list(protocols), "seeds": [0]})


# --- spec -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("external, says", [
    ({"name": "sz", "manifest": "/d/sz.parquet", "label_map": {"Tuberculosis": "tbc"}},
     "tasks.0: external 'sz': label_map maps onto 'tbc', not a label of this task (labels: ['tb'])"),
    ({"name": "sz", "manifest": "/d/sz.parquet", "split": "holdout"}, "tasks.0.external.0.split"),
    ({"name": "s/z", "manifest": "/d/sz.parquet"}, "tasks.0.external.0.name"),
    ({"name": "sz", "manifest": "/d/sz.parquet", "labels": ["x"]}, "unknown key(s) ['labels']"),
])
def test_a_bad_external_entry_is_one_line_naming_its_field(external, says):
    with pytest.raises(ConfigError) as e:
        _spec([_task(external=[external])])
    assert says in str(e.value) and "\n" not in str(e.value)


def test_external_names_are_unique_and_only_classification_has_them():
    twice = [{"name": "sz", "manifest": "/d/a.parquet"}, {"name": "sz", "manifest": "/d/b.parquet"}]
    with pytest.raises(ConfigError, match="external 'sz': the name is used twice"):
        _spec([_task(external=twice)])
    seg = {"name": "lungs", "manifest": "/d/l.parquet", "type": "segmentation", "classes": ["bg", "lung"],
           "external": [{"name": "sz", "manifest": "/d/sz.parquet"}]}
    with pytest.raises(ConfigError, match="a segmentation task has none"):
        _spec([seg], protocols=[{"name": "seg_linear"}])


# --- plan -----------------------------------------------------------------------------------------

def test_plan_counts_an_embedding_job_per_backbone_and_external_manifest_deduplicated():
    shared = {"name": "sz", "manifest": "/d/sz.parquet", "label_map": {"Tuberculosis": "tb"}}
    plain = _spec([_task(), _task(name="tb2", manifest="/d/tb2.parquet")])
    spec = _spec([_task(external=[shared, {"name": "other", "manifest": "/d/o.parquet"}]),
                  _task(name="tb2", manifest="/d/tb2.parquet", external=[{**shared, "name": "sz2"}])])
    plan, before = make_plan(spec), make_plan(plain)
    # 2 backbones x (2 tasks + 2 external manifests: sz.parquet used by both tasks is embedded once)
    assert len(plan.jobs) == 8 and plan.summary()["external_jobs"] == 4 and len(before.jobs) == 4
    assert "8 embedding jobs (4 of external test sets)" in plan.table()
    first = next(c for c in plan.cells if c.task.name == "tb")
    assert sorted(first.external_jobs) == ["external/other", "external/sz"]
    assert all(j in plan.jobs for c in plan.cells for j in c.external_jobs.values())
    sz = plan.jobs[first.external_jobs["external/sz"]]
    assert sz.contract == plan.jobs[first.embedding_job].contract and sz.task.labels == ["Tuberculosis"]
    # an external test set changes its task's cells' ids, and no other's
    assert {c.id for c in plan.cells}.isdisjoint({c.id for c in before.cells})
    again = make_plan(_spec([_task(external=[shared]), _task(name="tb2", manifest="/d/tb2.parquet")]))
    assert [c.id for c in again.cells if c.task.name == "tb2"] == [c.id for c in before.cells if c.task.name == "tb2"]


def test_a_cell_starts_once_its_external_jobs_are_done_too():
    from raddist.trials import JobStates

    cell = make_plan(_spec([_task(external=[{"name": "sz", "manifest": "/d/sz.parquet"}])])).cells[0]
    jobs = JobStates()
    jobs.done(cell.embedding_job, "k-home")
    assert jobs.ready(cell) is None  # its external test set is still being embedded
    jobs.done(cell.external_jobs["external/sz"], None, error="3 of 3 images failed to decode")
    assert jobs.ready(cell) == {"cell_id": cell.id, "key": "k-home", "job_error": "3 of 3 images failed to decode"}


def _manifest(path, data_by_split, label_column, prefix=""):
    rows = []
    for split, data in data_by_split.items():
        for i, sid in enumerate(data.sample_ids):
            rows.append({"sample_id": prefix + sid, "uri": f"{prefix}{sid}.png", "patient_id": prefix + data.patient_ids[i],
                         "split": split, label_column: int(data.labels[i, 0])})
    pq.write_table(pa.Table.from_pylist(rows), path)
    return rows


def test_the_external_manifest_content_is_part_of_the_cell_id(tmp_path):
    inputs = blob_inputs("binary", 1, sizes=(6, 4, 4))
    _manifest(tmp_path / "tb.parquet", inputs.splits, "tb")
    _manifest(tmp_path / "sz.parquet", inputs.splits, "Tuberculosis", prefix="x")
    ext = {"name": "sz", "manifest": str(tmp_path / "sz.parquet"), "label_map": {"Tuberculosis": "tb"}}
    spec = _spec([_task(manifest=str(tmp_path / "tb.parquet"), external=[ext])])
    bound, sources = provenance.bind(make_plan(spec), "cpu")
    assert all(set(c.external_keys) == {"external/sz"} for c in bound.cells) and "tb:external/sz" in sources.manifests
    table = pq.read_table(tmp_path / "sz.parquet")
    pq.write_table(table.set_column(4, "Tuberculosis", pa.array([1 - v for v in table["Tuberculosis"].to_pylist()])),
                   tmp_path / "sz.parquet")
    provenance.write_record(str(tmp_path / "out"), sources, "s")
    relabelled, now = provenance.bind(make_plan(spec), "cpu")
    assert {c.id for c in relabelled.cells}.isdisjoint({c.id for c in bound.cells})
    assert [provenance.describe(c) for c in provenance.changes(str(tmp_path / "out"), now, relabelled.cells)] == [
        "tb:external/sz: manifest labels changed since the last run; 2 cells rerun"]
    assert [c.external_keys for c in relabelled.cells] == [c.external_keys for c in bound.cells]  # same features
    unmapped = _spec([_task(manifest=str(tmp_path / "tb.parquet"), external=[{**ext, "label_map": {}}])])
    with pytest.raises(ConfigError, match=r"external 'sz' \(.*sz.parquet\): no label column 'tb' for the task's "
                                          r"label 'tb' \(map it with label_map\); its columns: \["):
        provenance.bind(make_plan(unmapped), "cpu")


def test_an_external_manifest_that_is_another_tasks_shares_its_job_and_each_cell_keeps_its_own_labels(tmp_path):
    inputs = blob_inputs("binary", 1, sizes=(6, 4, 4))
    _manifest(tmp_path / "tb.parquet", inputs.splits, "tb")
    _manifest(tmp_path / "sz.parquet", inputs.splits, "Tuberculosis", prefix="x")
    ext = {"name": "sz", "manifest": str(tmp_path / "sz.parquet"), "label_map": {"Tuberculosis": "tb"}}
    spec = _spec([_task(manifest=str(tmp_path / "tb.parquet"), external=[ext]),
                  _task(name="sz_task", manifest=str(tmp_path / "sz.parquet"), labels=["Tuberculosis"]),
                  _task(name="tb_again", manifest=str(tmp_path / "tb.parquet"))])
    bound, sources = provenance.bind(make_plan(spec), "cpu")
    assert len(bound.jobs) == 2 * 2  # per backbone: tb.parquet and sz.parquet, each embedded once
    by_task = {c.task.name: c for c in bound.cells if c.backbone.name == "tiny_vit"}
    assert by_task["tb"].external_jobs["external/sz"] == by_task["sz_task"].embedding_job
    assert by_task["tb"].external_keys["external/sz"] == bound.jobs[by_task["sz_task"].embedding_job].keys.features
    assert {"tb", "sz_task", "tb_again", "tb:external/sz"} <= set(sources.manifests)


def test_before_ray_an_external_manifest_is_checked_like_the_tasks_own(tmp_path):
    from raddist import preflight

    inputs = blob_inputs("binary", 1, sizes=(6, 4, 4))
    _manifest(tmp_path / "tb.parquet", inputs.splits, "tb")
    _manifest(tmp_path / "sz.parquet", inputs.splits, "Tuberculosis", prefix="x")
    ext = {"name": "sz", "manifest": str(tmp_path / "sz.parquet"), "label_map": {"Tuberculosis": "tb"}}

    def check(**over):
        external.check_before_ray(TaskSpec(**_task(manifest=str(tmp_path / "tb.parquet"), external=[{**ext, **over}])), [])

    check()
    spec = _spec([_task(manifest=str(tmp_path / "tb.parquet"), external=[{**ext, "label_map": {"Tb": "tb"}}])])
    with pytest.raises(ConfigError, match=r"external 'sz' .*: no label column 'Tb' for the task's label 'tb' \(label_map"):
        preflight.before_ray(spec, str(tmp_path / "out"), str(tmp_path / "cache"))
    _manifest(tmp_path / "sz_no_val.parquet", {k: v for k, v in inputs.splits.items() if k != "val"}, "Tuberculosis")
    with pytest.raises(ConfigError, match=r"external 'sz' .*: split: no 'val' rows; use 'all' to score every row"):
        check(split="val", manifest=str(tmp_path / "sz_no_val.parquet"))
    with pytest.raises(Exception, match="manifest not found: .*missing.parquet"):
        check(manifest=str(tmp_path / "missing.parquet"))


# --- a cell scored on another site -----------------------------------------------------------------

def _cache_entry(cache, key, data_by_split, shift=0.0):
    cls = np.concatenate([d.features["cls"] for d in data_by_split.values()]) + shift
    patch = np.concatenate([d.features["patch_mean"] for d in data_by_split.values()]) + shift
    n = len(cls)
    part = write_part(cache.entry(key), block_table({"row": np.arange(n), "slice": np.full(n, -1),
                                                     "error": np.array([""] * n, dtype=object), "cls": cls, "patch_mean": patch}))
    cache.finish(key, [part], {"feature_names": ["cls", "patch_mean"], "block_dims": [8, 8, 8, 8]})


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """An in-domain binary task (blobs) and a second site: the same findings, other patients, its features
    shifted, its label column named otherwise; its train rows are not scored (split: test)."""
    d = tmp_path_factory.mktemp("external")
    home = blob_inputs("binary", 1, sizes=(60, 20, 30), separation=2.0)
    away = blob_inputs("binary", 1, sizes=(24, 0, 40), separation=2.0)
    _manifest(d / "tb.parquet", home.splits, "tb")
    cache = EmbeddingCache(str(d / "cache"))
    _cache_entry(cache, "home", home.splits)
    _cache_entry(cache, "away", away.splits, shift=0.7)
    for name, flip in (("sz", False), ("sz_poisoned", True)):
        rows = _manifest(d / f"{name}.parquet", away.splits, "Tuberculosis", prefix="site-b-")
        if flip:
            pq.write_table(pa.Table.from_pylist([{**r, "Tuberculosis": 1 - r["Tuberculosis"]} for r in rows]),
                           d / f"{name}.parquet")
    return d


def _evaluate(d, protocol, params, manifest, out):
    from raddist.plan import Cell

    external = [{"name": "sz", "manifest": str(d / manifest), "label_map": {"Tuberculosis": "tb"}}] if manifest else []
    task = TaskSpec(name="tb", manifest=str(d / "tb.parquet"), type="binary", labels=["tb"], external=external)
    cell = Cell(id="c", backbone=BackboneSpec(name="tiny_vit", weights="random"), task=task, protocol=protocol,
                params=params, seed=0, embedding_job="j", external_keys={"external/sz": "away"} if manifest else {})
    ctx = CellContext(str(d / "cache"), str(d / out), n_boot=200, salt=SALT, resources=ResourcesSpec())
    outcome = evaluate_cell(cell, "home", ctx)
    assert outcome["ok"], outcome
    cell_dir = d / out / "cells" / "c"
    metrics = pq.read_table(cell_dir / "metrics.parquet").to_pandas().set_index("metric")
    return json.loads((cell_dir / "cell.json").read_text()), metrics[["value", "ci_low", "ci_high"]]


@pytest.mark.parametrize("protocol, params", [("knn", {"ks": [1, 5, 20]}), ("logreg", {"cs": [0.001, 1.0]})])
def test_external_labels_are_read_only_to_score(site, protocol, params):
    info, clean = _evaluate(site, protocol, params, "sz.parquet", f"{protocol}-clean")
    poisoned_info, poisoned = _evaluate(site, protocol, params, "sz_poisoned.parquet", f"{protocol}-poisoned")
    alone_info, alone = _evaluate(site, protocol, params, None, f"{protocol}-alone")
    # the same head, chosen on the task's own validation split, whatever the external labels or none
    assert info["selected"] == poisoned_info["selected"] == alone_info["selected"]
    assert info["val_score"] == poisoned_info["val_score"] == alone_info["val_score"]
    inside = [m for m in clean.index if not m.startswith("external/")]
    assert inside == list(alone.index)  # in-domain rows unchanged by adding an external set
    np.testing.assert_array_equal(clean.loc[inside].to_numpy(), alone.to_numpy())
    np.testing.assert_array_equal(poisoned.loc[inside].to_numpy(), alone.to_numpy())
    # the same external scores: flipped labels give exactly 1 - AUROC
    auc = clean.loc["external/sz/auroc", "value"]
    assert 0.6 < auc < clean.loc["auroc", "value"], (auc, clean.loc["auroc", "value"])
    assert poisoned.loc["external/sz/auroc", "value"] == pytest.approx(1 - auc, abs=1e-12)
    drop = clean.loc["external/sz/drop/auroc"]
    assert drop["value"] == pytest.approx(clean.loc["auroc", "value"] - auc, abs=1e-12)
    assert drop["ci_low"] < drop["value"] < drop["ci_high"]
