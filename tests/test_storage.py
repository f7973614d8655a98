import os

import pyarrow as pa
import pytest

from raddist import storage


def test_local_roundtrip_and_atomic_write(tmp_path):
    uri = str(tmp_path / "a" / "b.json")
    storage.write_json(uri, {"x": 1})
    assert storage.read_json(uri) == {"x": 1}
    assert storage.exists(uri)
    # no temporary sibling is left behind
    assert os.listdir(tmp_path / "a") == ["b.json"]


def test_file_scheme_and_relative_resolution(tmp_path):
    uri = "file://" + str(tmp_path / "x.txt")
    storage.write_text(uri, "hello")
    assert storage.read_text(str(tmp_path / "x.txt")) == "hello"
    assert storage.resolve("img/1.png", "/data/set") == "/data/set/img/1.png"
    assert storage.resolve("s3://b/k.png", "/data/set") == "s3://b/k.png"
    assert storage.resolve("img/1.png", "s3://bucket/set") == "s3://bucket/set/img/1.png"


def test_missing_object_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(str(tmp_path / "nope.png"))


def test_parquet_and_listing(tmp_path):
    storage.write_parquet(str(tmp_path / "t.parquet"), pa.table({"a": [1, 2]}))
    assert storage.read_parquet(str(tmp_path / "t.parquet"))["a"].to_pylist() == [1, 2]
    assert storage.list_files(str(tmp_path), ".parquet") == [str(tmp_path / "t.parquet")]
