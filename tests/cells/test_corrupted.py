"""Corrupted test splits in a cell (no backbone, no Ray): cache entries written directly, the corrupted
ones holding the test rows only; the train and val splits stay the clean ones, heavier corruption scores
lower, and the drop is paired on the same patients."""

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raddist.cells.corrupted import with_corrupted
from raddist.cells.run import CellContext, _frozen_inputs, evaluate_cell
from raddist.embed.cache import EmbeddingCache, block_table, write_part
from raddist.plan import Cell
from raddist.spec import BackboneSpec, ResourcesSpec, TaskSpec
from tests.protocols.synthetic import blob_inputs

SALT = "corrupted-test-salt"
NAMES = {1: "corruption/gaussian_noise/1", 5: "corruption/gaussian_noise/5"}


def _entry(cache, key, rows, cls, patch):
    n = len(rows)
    part = write_part(cache.entry(key), block_table({
        "row": np.asarray(rows), "slice": np.full(n, -1), "error": np.array([""] * n, dtype=object),
        "cls": cls, "patch_mean": patch}))
    cache.finish(key, [part], {"feature_names": ["cls", "patch_mean"], "block_dims": [8, 8, 8, 8]})


@pytest.fixture
def corrupted_cell(tmp_path):
    """A binary task (gaussian blobs): its clean entry, and one per severity holding the test rows only,
    their features the clean ones plus noise that grows with the severity."""
    inputs = blob_inputs("binary", 1, sizes=(60, 20, 40), separation=2.0)
    rows = []
    for split, data in inputs.splits.items():
        rows += [{"sample_id": sid, "uri": f"{sid}.png", "patient_id": data.patient_ids[i], "split": split,
                  "finding": int(data.labels[i, 0])} for i, sid in enumerate(data.sample_ids)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "manifest.parquet")
    cls = np.concatenate([d.features["cls"] for d in inputs.splits.values()])
    patch = np.concatenate([d.features["patch_mean"] for d in inputs.splits.values()])
    cache = EmbeddingCache(str(tmp_path / "cache"))
    _entry(cache, "clean", np.arange(len(rows)), cls, patch)
    test = np.flatnonzero([r["split"] == "test" for r in rows])
    rng = np.random.default_rng(0)
    for severity, name in NAMES.items():
        noise = lambda x: x + rng.normal(0, 0.6 * severity, x.shape).astype(x.dtype)  # noqa: E731
        _entry(cache, f"k{severity}", test, noise(cls[test]), noise(patch[test]))
    task = TaskSpec(name="t", manifest=str(tmp_path / "manifest.parquet"), type="binary", labels=["finding"])
    keys = {name: f"k{s}" for s, name in NAMES.items()}
    cell = Cell(id="cellc", backbone=BackboneSpec(name="tiny_vit", weights="random"), task=task, protocol="knn",
                params={"ks": [5, 10]}, seed=0, embedding_job="j", external_jobs={n: f"j{n}" for n in keys},
                external_keys=keys)
    ctx = CellContext(cache.root, str(tmp_path / "out"), n_boot=200, salt=SALT, resources=ResourcesSpec())
    return cell, ctx, cls, test


def test_corrupted_splits_replace_test_features_only(corrupted_cell):
    cell, ctx, _, test = corrupted_cell
    import json

    cls = EmbeddingCache(ctx.cache_root).load("clean").features["cls"]  # as cached (float16)
    inputs = _frozen_inputs(cell.task.model_dump_json(), "clean", ctx.cache_root, ctx.salt,
                            json.dumps(cell.external_keys, sort_keys=True))
    assert sorted(inputs.splits) == ["test", "test:" + NAMES[1], "test:" + NAMES[5], "train", "val"]
    np.testing.assert_array_equal(inputs.splits["train"].features["cls"], cls[:60])  # clean train and val
    np.testing.assert_array_equal(inputs.splits["val"].features["cls"], cls[60:80])
    clean, noisy = inputs.splits["test"], inputs.splits["test:" + NAMES[5]]
    np.testing.assert_array_equal(clean.features["cls"], cls[test])
    assert not np.allclose(noisy.features["cls"], clean.features["cls"])
    for attr in ("labels", "sample_ids", "patient_ids"):  # the test split's own, row for row
        np.testing.assert_array_equal(getattr(noisy, attr), getattr(clean, attr))


def test_heavier_corruption_scores_lower_with_a_paired_drop(corrupted_cell, tmp_path):
    cell, ctx, _, _ = corrupted_cell
    assert evaluate_cell(cell, "clean", ctx)["ok"]
    m = pq.read_table(tmp_path / "out" / "cells" / "cellc" / "metrics.parquet").to_pandas().set_index("metric")
    clean, mild, heavy = (m.loc[k, "value"] for k in ("auroc", NAMES[1] + "/auroc", NAMES[5] + "/auroc"))
    assert clean > 0.9 and mild > heavy + 0.1 and clean > heavy + 0.1, (clean, mild, heavy)
    for name in NAMES.values():
        drop = m.loc[name + "/drop/auroc"]
        assert drop["value"] == pytest.approx(clean - m.loc[name + "/auroc", "value"])
        assert drop["ci_low"] <= drop["value"] <= drop["ci_high"]
    assert m.loc[NAMES[5] + "/drop/auroc", "ci_low"] > 0  # the heavy drop is clear of zero
    # paired: the drop's CI is narrower than the difference of two independent intervals would be
    heavy_ci = m.loc[NAMES[5] + "/drop/auroc", "ci_high"] - m.loc[NAMES[5] + "/drop/auroc", "ci_low"]
    assert heavy_ci < (m.loc["auroc", "ci_high"] - m.loc["auroc", "ci_low"]) + (
        m.loc[NAMES[5] + "/auroc", "ci_high"] - m.loc[NAMES[5] + "/auroc", "ci_low"])


def test_a_corrupted_entry_that_is_not_the_test_rows_fails_in_one_line(corrupted_cell):
    cell, ctx, cls, test = corrupted_cell
    cache = EmbeddingCache(ctx.cache_root)
    _entry(cache, "wrong", test[:-1], cls[test[:-1]], cls[test[:-1]])
    inputs = _frozen_inputs(cell.task.model_dump_json(), "clean", ctx.cache_root, ctx.salt, "{}")
    with pytest.raises(ValueError, match=r"cover 39 rows, not the manifest's 40 test rows") as e:
        with_corrupted(inputs, cell.task, {NAMES[1]: "wrong"}, ctx.cache_root, ctx.salt)
    assert "\n" not in str(e.value)
    # an entry that is absent (its job failed: volumes) adds no split
    assert with_corrupted(inputs, cell.task, {NAMES[1]: "absent"}, ctx.cache_root, ctx.salt) is inputs
    assert dataclasses.is_dataclass(inputs)
