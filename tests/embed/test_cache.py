"""The caches: keys follow what the content depends on (and not the salt); an entry is complete only
when every part its meta.json lists is there, of the size listed, and of the content its name hashes."""

import json
import os

import numpy as np
import pyarrow as pa
import pytest

from raddist.embed import cache as cache_lib
from raddist.embed.cache import CacheEntryError, EmbeddingCache, block_table, write_part


def _entry(tmp_path, n_parts=2):
    cache = EmbeddingCache(str(tmp_path))
    parts = []
    for p in range(n_parts):
        rows = np.arange(p * 4, p * 4 + 4)
        cls = np.full((4, 3), p, np.float32)
        errors = np.array(["", "", "", "bad"] if p == 0 else [""] * 4, dtype=object)
        parts.append(write_part(cache.entry("k"), block_table({"row": rows, "slice": np.full(4, -1), "error": errors,
                                                                "cls": cls})))
    cache.finish("k", parts, {"feature_names": ["cls"], "block_dims": [3]})
    return cache, parts


def test_a_complete_entry_loads_every_row_once_without_its_errors(tmp_path):
    cache, parts = _entry(tmp_path)
    assert cache.check("k") is None
    got = cache.load("k")
    assert sorted(got.rows) == [0, 1, 2, 4, 5, 6, 7] and got.features["cls"].shape == (7, 3)
    assert got.errors.to_pylist() == [{"row": 3, "slice": -1, "error": "bad"}]
    assert got.meta["rows"] == 8 and got.meta["errors"] == 1


def test_a_missing_part_a_part_of_another_size_or_an_unreadable_meta_make_an_entry_incomplete(tmp_path):
    cache, parts = _entry(tmp_path)
    first = cache.uri("k", f"parts/{parts[0]['name']}")
    data = open(first, "rb").read()
    with open(first, "wb") as f:
        f.write(data[: len(data) // 2])  # a truncated part (half its rows)
    assert "bytes, meta.json says" in cache.check("k")
    os.remove(first)
    assert cache.check("k") == f"part {parts[0]['name']} missing"
    with open(cache.uri("k", "meta.json"), "w") as f:
        f.write("{not json")
    assert cache.check("k").startswith("meta.json unreadable")


def test_a_part_whose_content_changed_invalidates_its_entry_when_read(tmp_path):
    cache, parts = _entry(tmp_path)
    first = cache.uri("k", f"parts/{parts[0]['name']}")
    data = bytearray(open(first, "rb").read())
    data[len(data) // 2] ^= 0xFF  # same size, other content
    with open(first, "wb") as f:
        f.write(bytes(data))
    assert cache.check("k") is None  # sizes agree: the listing cannot tell
    with pytest.raises(CacheEntryError, match="does not match its content hash"):
        cache.load("k")
    assert cache.check("k") == "absent"  # invalidated: the next run recomputes it


def test_parts_are_named_by_their_content(tmp_path):
    table = block_table({"row": np.arange(3), "slice": np.full(3, -1), "error": np.array([""] * 3, dtype=object)})
    a = write_part(str(tmp_path / "e"), table)
    assert write_part(str(tmp_path / "e"), table)["name"] == a["name"]  # a retried block writes the same part
    assert cache_lib.read_part_file(str(tmp_path / "e" / "parts" / a["name"])).num_rows == 3
    assert json.loads(json.dumps(a))["error_rows"] == []
    assert pa.types.is_float16(block_table({"cls": np.zeros((2, 4), np.float32)})["cls"].type.value_type)
