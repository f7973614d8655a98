"""A rerun into the same output recomputes exactly what changed, and says why: a manifest relabelled in
place reruns its cells and reuses its embeddings; an overwritten weights file recomputes its backbone's
features and cells; an unchanged rerun runs nothing."""

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raddist import provenance
from raddist.plan import make_plan
from raddist.spec import parse
from raddist.sweep import run_sweep


def _save_weights(path, seed):
    import torch
    from safetensors.torch import save_file

    from raddist.backbones.registry import get_config
    from raddist.backbones.weights import build_model

    model = build_model(get_config("tiny_cnn"), "random")
    gen = torch.Generator().manual_seed(seed)
    save_file({k: (v + 0.05 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v).contiguous()
               for k, v in model.state_dict().items()}, path)


@pytest.fixture
def run_dir(synthetic_data, tmp_path):
    """A copy of the brain MRI manifest (absolute uris) and a weights file, both to be changed in place."""
    table = pq.read_table(os.path.join(synthetic_data, "brain_mri", "manifest.parquet"))
    base = os.path.join(synthetic_data, "brain_mri")
    uris = [u if os.path.isabs(u) else os.path.join(base, u) for u in table["uri"].to_pylist()]
    table = table.set_column(table.column_names.index("uri"), "uri", pa.array(uris, pa.string()))
    pq.write_table(table, tmp_path / "manifest.parquet")
    _save_weights(str(tmp_path / "cnn.safetensors"), seed=1)
    return tmp_path


def _spec(d):
    return parse({
        "name": "provenance",
        "backbones": [{"name": "tiny_cnn", "weights": str(d / "cnn.safetensors")}, {"name": "tiny_vit", "weights": "random"}],
        "tasks": [{"name": "brain", "manifest": str(d / "manifest.parquet"), "type": "multiclass",
                   "labels": ["label"], "classes": ["meningioma", "glioma", "pituitary"]}],
        "protocols": [{"name": "knn", "params": {"ks": [5]}}, {"name": "logreg", "params": {"cs": [1.0]}}],
        "seeds": [0], "bootstrap": 20,
        "storage": {"output": str(d / "out"), "cache": str(d / "cache")}})


def _results(d):
    table = pq.read_table(d / "out" / "results.parquet").to_pandas()
    return table[table.metric == "accuracy"].set_index(["backbone", "protocol"])["value"].sort_index()


def test_a_rerun_recomputes_exactly_what_changed(ray_local, run_dir):
    d = run_dir
    first = run_sweep(_spec(d), say=lambda line: None)
    assert first["cells_run_now"] == 4 and first["embedding_jobs_computed"] == 2 and first["changes"] == []
    before = _results(d)

    # relabel the test split in place: its cells rerun on the same embeddings, with new results
    table = pq.read_table(d / "manifest.parquet")
    labels = [(v + 1) % 3 if s == "test" else v for v, s in zip(table["label"].to_pylist(), table["split"].to_pylist())]
    pq.write_table(table.set_column(table.column_names.index("label"), "label", pa.array(labels, pa.int64())),
                   d / "manifest.parquet")
    lines = []
    relabelled = run_sweep(_spec(d), say=lines.append)
    assert relabelled["cells_run_now"] == 4 and relabelled["cells_done"] == 4
    assert relabelled["embedding_jobs_computed"] == 0 and relabelled["embedding_jobs_cached"] == 2
    assert "brain: manifest labels changed since the last run; 4 cells rerun" in lines
    assert [c["line"] for c in relabelled["changes"]] == ["brain: manifest labels changed since the last run; 4 cells rerun"]
    after_relabel = _results(d)
    assert len(after_relabel) == 4  # the new results replace the old ones
    assert (after_relabel - before).abs().max() > 0.2  # every test label moved: accuracy falls far

    # overwrite the weights file in place: that backbone's features and cells are recomputed
    _save_weights(str(d / "cnn.safetensors"), seed=2)
    lines = []
    reweighted = run_sweep(_spec(d), say=lines.append)
    assert reweighted["cells_run_now"] == 2 and reweighted["embedding_jobs_computed"] == 1
    assert "tiny_cnn: weights changed since the last run; 2 cells rerun" in lines
    after_weights = _results(d)
    assert (after_weights.loc["tiny_vit"] == after_relabel.loc["tiny_vit"]).all()
    assert (after_weights.loc["tiny_cnn"] != after_relabel.loc["tiny_cnn"]).any()
    jobs = json.loads((d / "out" / "embedding_jobs.json").read_text())
    assert sorted((j["backbone"], j["source"]) for j in jobs) == [("tiny_cnn", "pixels"), ("tiny_vit", "cached")]

    # change nothing: nothing runs
    lines = []
    same = run_sweep(_spec(d), say=lines.append)
    assert same["cells_run_now"] == 0 and same["embedding_jobs_computed"] == 0 and same["changes"] == []
    assert (_results(d) == after_weights).all()


def test_planning_reads_no_data_and_binding_reads_no_image(run_dir, monkeypatch):
    plan = make_plan(_spec(run_dir))  # structural: reads nothing
    opened = []
    import raddist.data.readers as readers

    for name in dir(readers):
        if name.startswith("read_") and callable(getattr(readers, name)):
            monkeypatch.setattr(readers, name, lambda *a, _n=name, **k: opened.append(_n))
    bound, sources = provenance.bind(plan, "cpu")
    assert opened == []
    assert set(sources.manifests) == {"brain"} and set(sources.weights) == {"tiny_cnn", "tiny_vit"}
    assert len({c.id for c in bound.cells}) == len(plan.cells) == 4
    assert all(j.keys is not None for j in bound.jobs.values())
    assert {c.id for c in bound.cells}.isdisjoint({c.id for c in plan.cells})
