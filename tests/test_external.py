"""External validation: the spec's checks, the plan's jobs, the cell ids, and a cell scored on another
site whose labels it never reads before scoring (raddist.external)."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raddist import provenance, spec as spec_lib
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
    relabelled, _ = provenance.bind(make_plan(spec), "cpu")
    assert {c.id for c in relabelled.cells}.isdisjoint({c.id for c in bound.cells})
    assert [c.external_keys for c in relabelled.cells] == [c.external_keys for c in bound.cells]  # same features
    unmapped = _spec([_task(manifest=str(tmp_path / "tb.parquet"), external=[{**ext, "label_map": {}}])])
    with pytest.raises(ConfigError, match=r"external 'sz' \(.*sz.parquet\): no label column 'tb' for the task's "
                                          r"label 'tb' \(map it with label_map\); its columns: \["):
        provenance.bind(make_plan(unmapped), "cpu")
