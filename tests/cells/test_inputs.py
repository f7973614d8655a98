"""A cell's inputs from a cache entry built directly (no backbone, no Ray): the join to the
manifest's splits, rows that failed to decode, and volumes pooled into one row each."""

import numpy as np
import pyarrow as pa
import pytest

from raddist.cells.inputs import frozen_inputs, pooled_volumes
from raddist.embed.cache import CachedEmbeddings, errors_table
from raddist.spec import TaskSpec

WIDTH = 4


def manifest(n=12, volumes=False) -> pa.Table:
    split = ["train"] * 6 + ["val"] * 3 + ["test"] * 3
    cols = {"sample_id": [f"s{i}" for i in range(n)], "uri": [f"/x/{i}.png" for i in range(n)],
            "patient_id": [f"p{i // 3}" for i in range(n)], "split": split[:n], "finding": [i % 2 for i in range(n)]}
    if volumes:  # three slices per volume, one volume per patient, the volume's label on every slice
        cols.update(volume_id=[f"v{i // 3}" for i in range(n)], slice_index=[i % 3 for i in range(n)],
                    finding=[(i // 3) % 2 for i in range(n)])
    return pa.table(cols)


def cached(rows, failed=()) -> CachedEmbeddings:
    """Features of the manifest rows given, in that order (row i's features hold i); failed: rows in the errors."""
    rows = np.asarray(rows, np.int64)
    cls = np.stack([np.full(WIDTH, float(r)) for r in rows]).astype(np.float32)
    return CachedEmbeddings(key="k", rows=rows, slices=np.full(len(rows), -1), features={"cls": cls},
                            block_dims=[WIDTH], meta={}, errors=errors_table([[r, -1, "bad"] for r in failed]))


TASK = TaskSpec(name="t", manifest="/x/m.parquet", type="binary", labels=["finding"])


def test_features_join_the_manifest_by_row_whatever_the_cache_order():
    table = manifest()
    inputs = frozen_inputs(TASK, table, cached(list(reversed(range(12)))))
    assert {k: len(v) for k, v in inputs.splits.items()} == {"train": 6, "val": 3, "test": 3}
    test = inputs.splits["test"]
    assert list(test.sample_ids) == ["s9", "s10", "s11"]
    np.testing.assert_array_equal(test.features["cls"][:, 0], [9, 10, 11])
    np.testing.assert_array_equal(test.labels[:, 0], [1, 0, 1])
    assert list(test.patient_ids) == ["p3", "p3", "p3"] and inputs.block_dims == [WIDTH]


def test_rows_that_failed_to_decode_drop_out_and_a_split_left_empty_is_an_error():
    inputs = frozen_inputs(TASK, manifest(), cached([i for i in range(12) if i != 4], failed=[4]))
    assert len(inputs.splits["train"]) == 5 and "s4" not in inputs.splits["train"].sample_ids
    with pytest.raises(ValueError, match="no decodable 'test' images"):
        frozen_inputs(TASK, manifest(), cached(range(9), failed=[9, 10, 11]))


def test_a_row_in_neither_the_features_nor_the_errors_fails_clearly():
    with pytest.raises(ValueError, match=r"cover 11 of 12 manifest rows \(first missing: row 4\)"):
        frozen_inputs(TASK, manifest(), cached([i for i in range(12) if i != 4]))
    with pytest.raises(ValueError, match="rows beyond its 12"):
        frozen_inputs(TASK, manifest(), cached(range(13)))


@pytest.mark.parametrize("how", ["mean", "max"])
def test_slices_pool_into_one_row_per_volume_with_the_slices_kept(how):
    table = manifest(volumes=True)
    vol_table, pooled = pooled_volumes(TASK, table, cached(range(12)), how)
    assert vol_table["sample_id"].to_pylist() == ["v0", "v1", "v2", "v3"] and list(pooled.rows) == [0, 1, 2, 3]
    expected = [1, 4, 7, 10] if how == "mean" else [2, 5, 8, 11]
    np.testing.assert_allclose(pooled.features["cls"][:, 0], expected)
    assert pooled.features["slices"][1].shape == (3, WIDTH)
    np.testing.assert_array_equal(pooled.features["slices"][1][:, 0], [3, 4, 5])  # in slice order


def test_a_volume_whose_slices_disagree_on_the_label_is_refused():
    table = manifest(volumes=True)
    labels = table["finding"].to_pylist()
    labels[1] = 1 - labels[1]
    table = table.set_column(table.column_names.index("finding"), "finding", pa.array(labels))
    with pytest.raises(ValueError, match="volume 'v0' has slices with different labels"):
        pooled_volumes(TASK, table, cached(range(12)), "mean")


@pytest.mark.parametrize("split, volumes, n", [("test", False, 3), ("all", False, 11), ("test", True, 1), ("all", True, 4)])
def test_an_external_test_set_joins_its_chosen_rows_with_placeholder_labels(split, volumes, n):
    """test:external/<name>: the external manifest's chosen split (or every row), joined by row like the
    task's own (volumes pooled), with zeros for labels: its label column is not even in the table."""
    from raddist.cells.inputs import with_external

    task = TaskSpec(**{**TASK.model_dump(), "external": [{"name": "b", "manifest": "/x/b.parquet", "split": split}]})
    home = frozen_inputs(task, manifest(), cached(range(12)))
    away = manifest(volumes=volumes).drop_columns(["finding"])  # as load_external hands it over
    rows = [i for i in range(12) if i != 4]  # row 4 failed to decode
    inputs = with_external(home, task, {"external/b": away}, {"external/b": cached(rows, failed=[4])})
    assert set(inputs.splits) == {"train", "val", "test", "test:external/b"} and set(home.splits) == {"train", "val", "test"}
    ext = inputs.splits["test:external/b"]
    assert len(ext) == n and ext.labels.shape == (n, 1) and not ext.labels.any()
    if not volumes:
        expected = [r for r in rows if split == "all" or r >= 9]
        np.testing.assert_array_equal(ext.features["cls"][:, 0], expected)
        assert list(ext.sample_ids) == [f"s{r}" for r in expected]
