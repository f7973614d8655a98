"""Every output matches its run: tables rewritten from the current plan (stale input errors gone), a
cell missing a file computed again, one sweep per output, and a same-named sweep extending it."""

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raddist.errors import ConfigError
from raddist.spec import parse
from raddist.sweep import run_sweep


@pytest.fixture
def manifest(synthetic_data, tmp_path):
    """The brain MRI manifest with absolute uris, and one row whose image does not exist."""
    base = os.path.join(synthetic_data, "brain_mri")
    table = pq.read_table(os.path.join(base, "manifest.parquet"))
    uris = [u if os.path.isabs(u) else os.path.join(base, u) for u in table["uri"].to_pylist()]
    row = next(i for i, s in enumerate(table["split"].to_pylist()) if s == "train")
    uris[row] = str(tmp_path / "gone.png")
    table = table.set_column(table.column_names.index("uri"), "uri", pa.array(uris, pa.string()))
    pq.write_table(table, tmp_path / "manifest.parquet")
    return tmp_path / "manifest.parquet", row


def _spec(tmp_path, manifest_uri, name="outputs", seeds=(0,)):
    return parse({
        "name": name,
        "backbones": [{"name": "tiny_cnn", "weights": "random"}],
        "tasks": [{"name": "brain", "manifest": str(manifest_uri), "type": "multiclass", "labels": ["label"],
                   "classes": ["meningioma", "glioma", "pituitary"]}],
        "protocols": [{"name": "knn", "params": {"ks": [5]}}],
        "seeds": list(seeds), "bootstrap": 20,
        "storage": {"output": str(tmp_path / "out"), "cache": str(tmp_path / "cache")}})


def test_every_output_matches_its_run(ray_local, manifest, tmp_path):
    uri, bad_row = manifest
    out = tmp_path / "out"
    first = run_sweep(_spec(tmp_path, uri), say=lambda line: None)
    assert first["input_errors"] == 1 and pq.read_table(out / "errors.parquet")["row"].to_pylist() == [bad_row]

    # another sweep into this output is refused, and touches nothing
    before = pq.read_table(out / "results.parquet")
    with pytest.raises(ConfigError, match=r"^storage.output: .* holds the sweep 'outputs', not 'other'"):
        run_sweep(_spec(tmp_path, uri, name="other"), say=lambda line: None)
    assert pq.read_table(out / "results.parquet").equals(before)

    # the same sweep with more seeds extends it
    more = run_sweep(_spec(tmp_path, uri, seeds=(0, 1)), say=lambda line: None)
    assert more["cells_run_now"] == 1 and more["cells_done"] == 2
    assert sorted(set(pq.read_table(out / "results.parquet")["seed"].to_pylist())) == [0, 1]

    # a cell that lost one of its files is computed again
    cell = next(d for d in (out / "cells").iterdir() if (d / "predictions.parquet").exists())
    (cell / "predictions.parquet").unlink()
    again = run_sweep(_spec(tmp_path, uri, seeds=(0, 1)), say=lambda line: None)
    assert again["cells_run_now"] == 1 and (cell / "predictions.parquet").exists()

    # the unreadable row dropped from the manifest: its error leaves errors.parquet with it
    table = pq.read_table(uri)
    pq.write_table(table.filter(pa.array([i != bad_row for i in range(table.num_rows)])), uri)
    fixed = run_sweep(_spec(tmp_path, uri, seeds=(0, 1)), say=lambda line: None)
    assert fixed["input_errors"] == 0 and fixed["cells_run_now"] == 2
    assert not (out / "errors.parquet").exists()
    assert pq.read_table(out / "results.parquet").num_rows == pq.read_table(out / "results.parquet").num_rows > 0
    assert len(set(pq.read_table(out / "results.parquet")["cell_id"].to_pylist())) == 2  # the old cells' rows gone
