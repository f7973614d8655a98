import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raddist.data import manifest
from raddist.errors import ManifestError


def _table(**over):
    cols = {
        "sample_id": ["a", "b", "c", "d"],
        "uri": ["img/a.png", "img/b.png", "/abs/c.png", "s3://bkt/d.png"],
        "patient_id": ["p1", "p1", "p2", "p3"],
        "split": ["train", "train", "val", "test"],
        "finding": [0, 1, 0, 1],
    }
    cols.update(over)
    return pa.table(cols)


def test_load_resolves_relative_uris(tmp_path):
    pq.write_table(_table(), tmp_path / "manifest.parquet")
    t = manifest.load(str(tmp_path / "manifest.parquet"))
    assert t["uri"].to_pylist() == [str(tmp_path / "img/a.png"), str(tmp_path / "img/b.png"), "/abs/c.png", "s3://bkt/d.png"]


def test_missing_manifest_names_uri(tmp_path):
    with pytest.raises(ManifestError, match="nope.parquet"):
        manifest.load(str(tmp_path / "nope.parquet"))


def test_missing_required_column(tmp_path):
    pq.write_table(_table().drop(["patient_id"]), tmp_path / "m.parquet")
    with pytest.raises(ManifestError, match="patient_id"):
        manifest.load(str(tmp_path / "m.parquet"))


@pytest.mark.parametrize(
    "over, match",
    [
        ({"patient_id": ["p1", "p2", "p2", "p3"]}, "the patient of rows 1 and 2 is in both 'train' and 'val'"),
        ({"sample_id": ["a", "b", "a", "d"]}, "rows 0 and 2 have the same sample_id"),
        ({"split": ["train", "train", "valid", "test"]}, "row 2 has split 'valid'"),
        ({"finding": [0, 1, 2, 1]}, "row 2 column 'finding' has value 2"),
    ],
)
def test_validation_errors_name_the_row(over, match):
    with pytest.raises(ManifestError, match=match):
        manifest.validate(_table(**over), "m.parquet", ["finding"], "multilabel")


def test_unknown_label_column():
    with pytest.raises(ManifestError, match="label column 'effusion' not found"):
        manifest.validate(_table(), "m.parquet", ["effusion"], "multilabel")


def test_content_hash_tracks_uris_not_labels():
    base = manifest.content_hash(_table())
    assert manifest.content_hash(_table(finding=[1, 1, 1, 1])) == base
    assert manifest.content_hash(_table(uri=["x", "b", "c", "d"])) != base


def test_salted_load_pseudonymises_ids_consistently(tmp_path):
    pq.write_table(_table(), tmp_path / "m.parquet")
    a = manifest.load(str(tmp_path / "m.parquet"), salt="s1")
    b = manifest.load(str(tmp_path / "m.parquet"), salt="s1")
    c = manifest.load(str(tmp_path / "m.parquet"), salt="s2")
    assert a["sample_id"].to_pylist() == b["sample_id"].to_pylist()
    assert set(a["sample_id"].to_pylist()).isdisjoint({"a", "b", "c", "d"})
    assert a["patient_id"][0] == a["patient_id"][1] != a["patient_id"][2]  # same patient, same pseudonym
    assert a["sample_id"].to_pylist() != c["sample_id"].to_pylist()
    assert a["uri"].to_pylist() == manifest.load(str(tmp_path / "m.parquet"))["uri"].to_pylist()
