"""`raddist export OUTPUT --embeddings DIR`: a cache entry written through the real cache code, exported,
read back by plain pyarrow, equal to the cache; no uri and no id in the clear."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raddist import cli
from raddist.embed.cache import EmbeddingCache, block_table, write_part
from raddist.privacy import pseudonym

SALT = "export-test-salt"


def _run(tmp_path):
    n = 6
    manifest = tmp_path / "manifest.parquet"
    pq.write_table(pa.table({
        "sample_id": [f"ACC{i:04d}" for i in range(n)], "uri": [f"/secret/PAT{i}/img.dcm" for i in range(n)],
        "patient_id": [f"PAT{i}" for i in range(n)], "split": ["train", "train", "val", "val", "test", "test"],
        "modality": ["DX"] * n, "opacity": [0, 1, 0, 1, 1, 0], "effusion": [1, 1, 0, 0, 0, 1]}), manifest)
    cache, key = EmbeddingCache(str(tmp_path / "cache")), "k" * 32
    rng = np.random.default_rng(0)
    blocks = []
    for rows in ([3, 0, 1], [5, 4, 2]):  # blocks out of manifest order; row 4 failed to decode
        table = block_table({"row": np.array(rows), "slice": np.full(3, -1), "error": np.array(
            ["bad header" if r == 4 else "" for r in rows], dtype=object),
            "cls": rng.normal(size=(3, 8)), "avgpool": rng.normal(size=(3, 8))})
        blocks.append(write_part(cache.entry(key), table))
    cache.finish(key, blocks, {"backbone": "tiny_vit", "contract": {"size": 32}, "features": {"n_last_blocks": 1},
                               "feature_names": ["cls", "avgpool"], "block_dims": [8]})
    out = tmp_path / "out"
    out.mkdir()
    (out / "embedding_jobs.json").write_text(json.dumps([{"job_id": "j", "key": key, "backbone": "tiny_vit",
                                                          "task": "chest", "source": "decoded"}]))
    (out / "summary.json").write_text(json.dumps({"cache": str(tmp_path / "cache")}))
    (out / "run.json").write_text(json.dumps({"manifests": {"chest": str(manifest)}}))
    return out, cache.load(key)


def test_export_reads_back_with_plain_pyarrow_and_matches_the_cache(tmp_path, monkeypatch, capsys):
    out, cached = _run(tmp_path)
    monkeypatch.setenv("RADDIST_SALT", SALT)
    dest = tmp_path / "exported"
    assert cli.main(["export", str(out), "--embeddings", str(dest)]) == 0
    table = pq.read_table(dest / "tiny_vit" / "chest" / "embeddings.parquet")
    assert table.column_names == ["id", "patient", "split", "slice", "opacity", "effusion", "cls", "avgpool"]
    assert table["id"].to_pylist() == [pseudonym(f"ACC{i:04d}", SALT) for i in (0, 1, 2, 3, 5)]  # row 4 failed
    assert table["split"].to_pylist() == ["train", "train", "val", "val", "test"]
    assert table["opacity"].to_pylist() == [0, 1, 0, 1, 0]
    for name in ("cls", "avgpool"):
        assert table.schema.field(name).type == pa.list_(pa.float32(), 8)
        np.testing.assert_array_equal(np.stack(table[name].to_numpy(zero_copy_only=False)), cached.features[name])
    meta = json.loads((dest / "tiny_vit" / "chest" / "meta.json").read_text())
    assert meta["backbone"] == "tiny_vit" and meta["cache_key"] == "k" * 32 and meta["contract"] == {"size": 32}
    written = b"".join(p.read_bytes() for p in dest.rglob("*") if p.is_file())
    for secret in (b"/secret", b"PAT1", b"ACC0001", b"img.dcm", b"DX"):
        assert secret not in written, secret
    assert "2 files" in capsys.readouterr().out
