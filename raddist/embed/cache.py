"""Content-addressed caches written by the workers, complete only once the driver's meta.json lists
every part, and verified when read.

    CACHE/features/<key>/   an embedding job's features (EmbeddingCache)
    CACHE/pixels/<key>/     a manifest's decoded uint8 squares under one preprocessing contract (PixelCache)

An entry:
  parts/<sha256>.parquet  one per block, written by the worker that computed it (the driver never holds
                          the data): row (the manifest row), slice (-1 for an image; z for a volume's
                          slice), error ("" when the row computed), and the block's columns
  errors.parquet          row, slice, error: the rows that could not be read or decoded (no uris: file
                          names may carry patient ids)
  meta.json               written last by the driver: every part's name, rows and bytes, the counts.
                          Its presence makes the entry complete; a part missing, of another size, or of
                          another content (sha256, checked on read) makes it incomplete again
  lease.json              held while a run computes the entry (embed.lease): one writer per key

Keys hash everything the content depends on (raddist.keys) and nothing that names a patient: rows are
manifest positions, never ids, so neither the keys nor the files change with the deployment's salt.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raddist import storage
from raddist.errors import RaddistError

ROW_COLUMNS = ("mask", "shape", "affine")  # per-row extras of segmentation and volume rows
READ_THREADS = 16


class CacheEntryError(RaddistError):
    """A cache entry does not match its meta.json: it was invalidated, and a rerun recomputes it."""


def _part_name(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32] + ".parquet"


def read_part_file(uri: str, columns: Optional[List[str]] = None) -> pa.Table:
    """One part, checked against the content hash its name carries (FileNotFoundError if absent)."""
    data = storage.read_bytes(uri)
    if _part_name(data) != posixpath.basename(uri):
        raise CacheEntryError(f"cache part {uri} does not match its content hash")
    return pq.read_table(io.BytesIO(data), columns=columns)


def write_part(entry_uri: str, table: pa.Table) -> dict:
    """Write one block into an entry, named by its content: {name, rows, sources, errors, bytes,
    error_rows}: sources the manifest rows it holds (a volume's slices are one), error_rows the
    (row, slice, error) of the rows that failed."""
    buf = io.BytesIO()
    pq.write_table(table, buf)
    data = buf.getvalue()
    name = _part_name(data)
    storage.write_bytes(storage.join(entry_uri, "parts", name), data)
    errors = np.asarray(table["error"].to_pylist(), dtype=object)
    failed = np.flatnonzero(errors != "")
    rows, slices = table["row"].to_numpy(), table["slice"].to_numpy()
    return {"name": name, "rows": table.num_rows, "sources": len(np.unique(rows)), "errors": len(failed),
            "bytes": len(data),
            "error_rows": [[int(rows[i]), int(slices[i]), str(errors[i])] for i in failed]}


class ContentCache:
    kind = ""  # the folder under the cache root

    def __init__(self, root: str):
        self.root = storage.normalize(root)

    def entry(self, key: str) -> str:
        return storage.join(self.root, self.kind, key)

    def uri(self, key: str, name: str) -> str:
        return storage.join(self.entry(key), name)

    def part_uris(self, key: str, meta: dict) -> List[str]:
        return [self.uri(key, f"parts/{p['name']}") for p in meta["parts"]]

    def meta(self, key: str) -> dict:
        return storage.read_json(self.uri(key, "meta.json"))

    def check(self, key: str) -> Optional[str]:
        """None when the entry is complete; else why not, in a few words."""
        uri = self.uri(key, "meta.json")
        if not storage.exists(uri):
            return "absent"
        try:
            meta = self.meta(key)
            listed = {p["name"]: p["bytes"] for p in meta["parts"]}
        except Exception as e:  # noqa: BLE001 - any unreadable meta.json means: recompute
            return f"meta.json unreadable ({type(e).__name__})"
        if not storage.exists(self.uri(key, "errors.parquet")):
            return "errors.parquet missing"
        fs, path = storage.filesystem(self.uri(key, "parts"))
        found = {posixpath.basename(i.path): i.size for i in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))}
        for name, size in listed.items():
            if name not in found:
                return f"part {name} missing"
            if found[name] != size:
                return f"part {name} is {found[name]} bytes, meta.json says {size}"
        return None

    def is_complete(self, key: str) -> bool:
        return self.check(key) is None

    def finish(self, key: str, parts: List[dict], meta: dict) -> dict:
        """Write errors.parquet, then meta.json: the entry is complete from here on."""
        error_rows = [r for p in parts for r in p.get("error_rows", [])]
        storage.write_parquet(self.uri(key, "errors.parquet"), errors_table(error_rows))
        listed = [{k: p[k] for k in ("name", "rows", "errors", "bytes")} for p in parts]
        meta = {**meta, "parts": sorted(listed, key=lambda p: p["name"]),
                "rows": sum(p["rows"] for p in parts), "errors": len(error_rows)}
        storage.write_json(self.uri(key, "meta.json"), meta)
        return meta

    def errors(self, key: str) -> pa.Table:
        return storage.read_parquet(self.uri(key, "errors.parquet"))

    def invalidate(self, key: str) -> None:
        """Forget an entry that failed verification: the next run recomputes it."""
        storage.delete_file(self.uri(key, "meta.json"))

    def clear(self, key: str) -> None:
        storage.delete_dir(storage.join(self.entry(key), "parts"))
        storage.delete_file(self.uri(key, "meta.json"))

    def read(self, key: str, columns: Optional[List[str]] = None, meta: Optional[dict] = None) -> pa.Table:
        """Every part of a complete entry as one table, each part checked against its name's sha256."""
        meta = meta or self.meta(key)
        with ThreadPoolExecutor(READ_THREADS) as pool:
            tables = list(pool.map(lambda p: self._read_part(key, p, columns), meta["parts"]))
        if not tables:
            return pa.table({c: pa.array([], pa.int64()) for c in ("row", "slice")})
        return pa.concat_tables(tables, promote_options="default")

    def _read_part(self, key: str, part: dict, columns) -> pa.Table:
        try:
            return read_part_file(self.uri(key, f"parts/{part['name']}"), columns)
        except (FileNotFoundError, CacheEntryError) as e:
            self.invalidate(key)
            what = "is missing" if isinstance(e, FileNotFoundError) else "does not match its content hash"
            raise CacheEntryError(f"cache entry {self.entry(key)}: part {part['name']} {what}; "
                                  "the entry was invalidated and the next run recomputes it") from None


class PixelCache(ContentCache):
    kind = "pixels"


@dataclass
class CachedEmbeddings:
    """An embedding job's features, row for row (errored rows left out). rows: the manifest row of
    each; slices: its slice (-1 for an image)."""

    key: str
    rows: np.ndarray
    slices: np.ndarray
    features: Dict[str, np.ndarray]  # float32 (N, D)
    block_dims: List[int]
    meta: dict
    errors: pa.Table  # row, slice, error
    dense: Dict[str, np.ndarray] = field(default_factory=dict)  # float16 (N, D, h, w), meta["dense_names"]
    extras: Optional[pa.Table] = None  # per-row mask, shape, affine


class EmbeddingCache(ContentCache):
    kind = "features"

    def load(self, key: str) -> CachedEmbeddings:
        reason = self.check(key)
        if reason is not None:
            raise FileNotFoundError(f"embeddings {key} are not complete in the cache at {self.root} ({reason})")
        meta = self.meta(key)
        table = self.read(key, meta=meta)
        if table.num_rows:
            table = table.filter(pa.array(np.asarray(table["error"].to_pylist(), dtype=object) == ""))
            # manifest order, whatever blocks the parts came in: what trains on the rows in order (the
            # segmentation heads' mini-batches) must not depend on the cluster's layout
            table = table.sort_by([("row", "ascending"), ("slice", "ascending")])
        features = {}
        for name in meta["feature_names"]:
            if name not in table.column_names or table.num_rows == 0:
                features[name] = np.zeros((0, 0), np.float32)
                continue
            col = table[name].combine_chunks()
            features[name] = col.values.to_numpy(zero_copy_only=False).reshape(-1, col.type.list_size).astype(np.float32)
        dense = {n: tensor_column(table, n) for n in meta.get("dense_names", []) if n in table.column_names}
        extras = [c for c in ROW_COLUMNS if c in table.column_names]
        return CachedEmbeddings(
            key=key, rows=np.asarray(table["row"].to_pylist(), np.int64) if table.num_rows else np.zeros(0, np.int64),
            slices=np.asarray(table["slice"].to_pylist(), np.int64) if table.num_rows else np.zeros(0, np.int64),
            features=features, block_dims=list(meta["block_dims"]), meta=meta, errors=self.errors(key), dense=dense,
            extras=table.select(extras) if extras else None)


ERRORS_SCHEMA = pa.schema([("row", pa.int64()), ("slice", pa.int64()), ("error", pa.string())])


def errors_table(rows: Optional[List[list]] = None) -> pa.Table:
    """(row, slice, error) rows as a table."""
    rows = rows or []
    return pa.table({name: pa.array([r[i] for r in rows], ERRORS_SCHEMA.field(name).type)
                     for i, name in enumerate(ERRORS_SCHEMA.names)})


def tensor_column(table: pa.Table, name: str) -> np.ndarray:
    """A fixed-shape tensor column as one (N, *shape) array (zero-copy where Arrow allows)."""
    col = table[name].combine_chunks()
    if len(col) == 0:
        return np.zeros((0,), np.float16)
    return col.to_numpy_ndarray()


def block_table(columns: Dict[str, np.ndarray]) -> pa.Table:
    """A block's columns as Arrow: 2-D float arrays as float16 fixed-size lists (features), >= 3-D as
    fixed-shape tensors (patch tokens, masks, images), the rest as they are."""
    arrays = {}
    for name, arr in columns.items():
        arr = np.asarray(arr)
        if arr.ndim > 2:
            arrays[name] = pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(arr))
        elif arr.ndim == 2:
            flat = np.ascontiguousarray(arr, dtype=np.float16 if arr.dtype.kind == "f" and name not in ROW_COLUMNS
                                        else arr.dtype).reshape(-1)
            arrays[name] = pa.FixedSizeListArray.from_arrays(pa.array(flat), arr.shape[1])
        elif arr.dtype.kind in "OUS":
            arrays[name] = pa.array([str(v) for v in arr], pa.string())
        else:
            arrays[name] = pa.array(arr)
    return pa.table(arrays)
