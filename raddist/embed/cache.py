"""The embedding cache: one directory per key, complete only once its meta.json exists.

The key hashes the backbone and its weights' identity, the preprocessing contract, the feature
spec and the manifest's content, so a change to any of them means a new key and an equal key is
never computed twice. Layout of CACHE/<key>/:
  features.parquet  sample_id, cls (float16 list), patch_mean (float16 list, optional), and as the job
                    asks: patch_tokens, patch_tokens_2.. (float16 tensors (D, h, w), the last block
                    first), mask (uint8 (S, S) label map at the model's size), volume_id,
                    slice_index, shape (the source's (D, H, W)), affine (16 floats, volumes only)
  errors.parquet    sample_id, uri, error: rows that could not be read or decoded
  meta.json         written last: what was embedded, block widths, counts, timings
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import pyarrow as pa

from raddist import storage
from raddist.data.transforms import DECODE_VERSION
from raddist.plan import EmbeddingJob, content_hash

# bump when the embedding code changes what it computes for the same inputs
EMBEDDER_VERSION = 2


@dataclass
class CachedEmbeddings:
    key: str
    sample_ids: np.ndarray
    features: Dict[str, np.ndarray]  # float32
    block_dims: List[int]
    meta: dict
    errors: pa.Table
    dense: Dict[str, np.ndarray] = field(default_factory=dict)  # float16 (N, D, h, w), meta["dense_names"]
    rows: Optional[pa.Table] = None  # per-row extras: mask, volume_id, slice_index, shape, affine


class EmbeddingCache:
    def __init__(self, root: str):
        self.root = storage.normalize(root)

    def key(self, job: EmbeddingJob, weights_identity: str, manifest_hash: str, slices: bool = False,
            decoder: Optional[str] = None) -> str:
        """slices: the manifest's rows are volumes, embedded slice by slice (a different output for
        the same inputs than the middle slice per row that such rows got before).
        decoder: JPEGs were decoded on the GPU by this decoder (data.device_decode), not by Pillow."""
        parts = {
            "backbone": job.backbone.name,
            "weights": weights_identity,
            "contract": job.contract,
            "features": job.features,
            "manifest": manifest_hash,
            "version": EMBEDDER_VERSION,
            "decode_version": DECODE_VERSION,  # the pixels the model saw
        }
        if slices:
            parts["slices"] = "axis2"
        if decoder:
            parts["decoder"] = decoder
        return content_hash(parts)

    def dir(self, key: str) -> str:
        return storage.join(self.root, key)

    def uri(self, key: str, name: str) -> str:
        return storage.join(self.root, key, name)

    def is_complete(self, key: str) -> bool:
        return storage.exists(self.uri(key, "meta.json"))

    def clear_partial(self, key: str) -> None:
        """An interrupted job leaves files without meta.json; start that key afresh."""
        if not self.is_complete(key):
            storage.delete_dir(self.dir(key))

    def write_meta(self, key: str, meta: dict) -> None:
        storage.write_json(self.uri(key, "meta.json"), meta)

    def meta(self, key: str) -> dict:
        return storage.read_json(self.uri(key, "meta.json"))

    def load(self, key: str) -> CachedEmbeddings:
        if not self.is_complete(key):
            raise FileNotFoundError(f"embeddings {key} are not in the cache at {self.root}")
        meta = self.meta(key)
        table = storage.read_parquet(self.uri(key, "features.parquet"))
        features = {}
        for name in meta["feature_names"]:
            if name not in table.column_names:  # every row failed to decode
                features[name] = np.zeros((0, 0), dtype=np.float32)
                continue
            col = table[name].combine_chunks()
            width = col.type.list_size
            flat = col.values.to_numpy(zero_copy_only=False)
            features[name] = flat.reshape(-1, width).astype(np.float32)
        errors = storage.read_parquet(self.uri(key, "errors.parquet"))
        dense = {n: tensor_column(table, n) for n in meta.get("dense_names", []) if n in table.column_names}
        extras = [c for c in ROW_COLUMNS if c in table.column_names]
        return CachedEmbeddings(
            key=key,
            sample_ids=np.asarray(table["sample_id"].to_pylist(), dtype=object),
            features=features,
            block_dims=list(meta["block_dims"]),
            meta=meta,
            errors=errors,
            dense=dense,
            rows=table.select(extras) if extras else None,
        )


# per-row columns other than features, carried from the decode step to the cache
ROW_COLUMNS = ("mask", "volume_id", "slice_index", "shape", "affine")


def tensor_column(table: pa.Table, name: str) -> np.ndarray:
    """A fixed-shape tensor column as one (N, *shape) array (zero-copy where Arrow allows)."""
    col = table[name].combine_chunks()
    if len(col) == 0:
        return np.zeros((0,), np.float16)
    return col.to_numpy_ndarray()


def rows_table(sample_ids, features: Dict[str, np.ndarray], extras: Dict[str, np.ndarray]) -> pa.Table:
    """features_table plus the tensors (N, ...) >= 3-D and the per-row extras of ROW_COLUMNS."""
    flat = {k: v for k, v in features.items() if v.ndim == 2}
    table = features_table(sample_ids, flat)
    for name, arr in [(k, v) for k, v in features.items() if v.ndim > 2] + list(extras.items()):
        table = table.append_column(name, _arrow(arr))
    return table


def _arrow(arr: np.ndarray) -> pa.Array:
    arr = np.asarray(arr)
    if arr.ndim > 2:
        return pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(arr))
    if arr.ndim == 2:
        return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(arr).reshape(-1)), arr.shape[1])
    if arr.dtype.kind in "OUS":
        return pa.array([str(v) for v in arr], pa.string())
    return pa.array(arr)


def features_table(sample_ids, features: Dict[str, np.ndarray]) -> pa.Table:
    """Features as fixed-size float16 lists: half the bytes, ample precision for probing."""
    cols = {"sample_id": pa.array(list(sample_ids), pa.string())}
    for name, arr in features.items():
        arr = np.ascontiguousarray(arr, dtype=np.float16)
        cols[name] = pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1)), arr.shape[1])
    return pa.table(cols)


ERRORS_SCHEMA = pa.schema([("sample_id", pa.string()), ("uri", pa.string()), ("error", pa.string())])


def errors_table(rows: Optional[List[dict]] = None) -> pa.Table:
    rows = rows or []
    return pa.Table.from_pylist(rows, schema=ERRORS_SCHEMA)
