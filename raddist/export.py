"""`raddist export OUTPUT --embeddings DIR`: each backbone x task's cached features as open Parquet
files that other tools read (pyarrow, pandas, polars, DuckDB):

  DIR/<backbone>/<task>/embeddings.parquet   one row per embedded image (or volume slice): id and
      patient (keyed pseudonyms, raddist.privacy), split, slice (-1 for an image), the label columns,
      and one float32 fixed-size-list column per feature type (cls, avgpool, ...)
  DIR/<backbone>/<task>/meta.json            backbone, cache key (it hashes the weights' identity,
      the preprocessing contract, the feature spec and the manifest), contract, features, rows

No URI and no DICOM attribute is written: the manifest's uri, mask_uri, modality and any column that is
not a label are left out. The run's output says where things are: embedding_jobs.json (backbone, task,
cache key), summary.json (the cache root) and run.json (each task's manifest).
"""

from __future__ import annotations

import json
from typing import List, Optional

import numpy as np
import pyarrow as pa

from raddist import storage
from raddist.errors import RaddistError

# manifest columns that are never exported; every other non-integer column is left out too
NOT_EXPORTED = ("sample_id", "uri", "patient_id", "split", "modality", "volume_id", "slice_index", "mask_uri")


def _label_columns(manifest: pa.Table) -> List[str]:
    return [c for c in manifest.column_names
            if c not in NOT_EXPORTED and pa.types.is_integer(manifest.schema.field(c).type)]


def embedding_table(emb, manifest: pa.Table) -> pa.Table:
    """emb: embed.cache.CachedEmbeddings; manifest: loaded with the deployment's salt (ids pseudonymised)."""
    rows = emb.rows
    cols = {"id": manifest["sample_id"].take(rows), "patient": manifest["patient_id"].take(rows),
            "split": manifest["split"].take(rows), "slice": pa.array(emb.slices, pa.int64())}
    for c in _label_columns(manifest):
        cols[c] = manifest[c].take(rows)
    for name, arr in emb.features.items():
        arr = np.ascontiguousarray(arr, np.float32)
        cols[name] = pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1)), max(arr.shape[1], 1))
    return pa.table(cols)


def export_embeddings(output: str, dest: str, salt: Optional[str] = None) -> List[str]:
    """Write every finished embedding job of the run at OUTPUT under DEST; returns the files written."""
    from raddist.data import manifest as manifest_lib
    from raddist.embed.cache import EmbeddingCache
    from raddist.privacy import deployment_salt

    need = {name: storage.join(output, name) for name in ("embedding_jobs.json", "summary.json", "run.json")}
    for name, uri in need.items():
        if not storage.exists(uri):
            raise RaddistError(f"{output}: no {name}; export needs a finished run's output")
    jobs = storage.read_json(need["embedding_jobs.json"])
    cache = EmbeddingCache(storage.read_json(need["summary.json"])["cache"])
    manifests = storage.read_json(need["run.json"]).get("manifests", {})
    salt = salt if salt is not None else deployment_salt()
    written = []
    for job in jobs:
        if job.get("source") == "failed" or not cache.is_complete(job["key"]):
            continue
        if job["task"] not in manifests:
            raise RaddistError(f"{output}/run.json: no manifest for task '{job['task']}'")
        emb = cache.load(job["key"])
        table = embedding_table(emb, manifest_lib.load(manifests[job["task"]], salt=salt))
        folder = storage.join(dest, job["backbone"], job["task"])
        storage.write_parquet(storage.join(folder, "embeddings.parquet"), table)
        meta = {"backbone": job["backbone"], "task": job["task"], "cache_key": job["key"],
                "weights_identity": "hashed in cache_key (raddist.keys)", "contract": emb.meta.get("contract"),
                "features": emb.meta.get("features"), "feature_columns": list(emb.features),
                "rows": table.num_rows, "ids": "keyed pseudonyms (HMAC-SHA256 with the deployment's salt)"}
        storage.write_text(storage.join(folder, "meta.json"), json.dumps(meta, indent=2, sort_keys=True, default=str))
        written += [storage.join(folder, "embeddings.parquet"), storage.join(folder, "meta.json")]
    return written
