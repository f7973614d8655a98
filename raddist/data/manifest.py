"""A dataset is a manifest: a Parquet table, one row per image, slice or volume.

Columns (required unless marked optional):
  sample_id    str   unique per row
  uri          str   the image: absolute URI, or a path relative to the manifest's directory
  patient_id   str   splits are by patient; a patient in two splits is an error
  split        str   train | val | test
  modality     str   CR, DX, CT, MR, ... (optional)
  volume_id    str   the volume a slice belongs to (optional)
  slice_index  int   the slice's index within its volume (optional)
  mask_uri     str   the segmentation mask (optional; segmentation tasks)
  <labels>     int   one column per label: 0/1 for multilabel and binary, a class index for multiclass
"""

from __future__ import annotations

import os
from typing import Iterable, Optional, Sequence

import numpy as np
import pyarrow as pa

from raddist import storage
from raddist.errors import ManifestError
from raddist.tasks import SPLITS

REQUIRED = ("sample_id", "uri", "patient_id", "split")
OPTIONAL = ("modality", "volume_id", "slice_index", "mask_uri")


PSEUDONYMISED = ("sample_id", "patient_id", "volume_id")


def load(uri: str, salt: Optional[str] = None) -> pa.Table:
    """Read a manifest and resolve relative uris against its directory.

    With a salt, the id columns become keyed pseudonyms, so that no site identifier (an accession
    number used as a sample id, a PatientID) travels into the cache, the outputs or a log.
    """
    if not storage.exists(uri):
        raise ManifestError(f"manifest not found: {uri}")
    try:
        table = storage.read_parquet(uri)
    except storage.StorageError:
        raise
    except Exception as e:  # a manifest that is not Parquet
        raise ManifestError(f"manifest {uri} is not a readable Parquet file: {e}") from None
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise ManifestError(f"manifest {uri} lacks required column(s) {missing}; has {table.column_names}")
    base = storage.parent(storage.normalize(uri))
    for col in ("uri", "mask_uri"):
        if col in table.column_names:
            values = [None if u is None else storage.resolve(u, base) for u in table[col].to_pylist()]
            table = table.set_column(table.column_names.index(col), col, pa.array(values, pa.string()))
    if salt is not None:
        from raddist.privacy import pseudonym

        for col in PSEUDONYMISED:
            if col in table.column_names:
                values = [None if v is None else pseudonym(v, salt) for v in table[col].to_pylist()]
                table = table.set_column(table.column_names.index(col), col, pa.array(values, pa.string()))
    return table


def validate(
    table: pa.Table,
    uri: str,
    label_columns: Sequence[str] = (),
    task_type: Optional[str] = None,
    num_classes: Optional[int] = None,
) -> None:
    """Check the schema up front, so a bad manifest fails before any work is done."""
    for col in label_columns:
        if col not in table.column_names:
            raise ManifestError(f"manifest {uri}: label column '{col}' not found; columns are {table.column_names}")
    ids = table["sample_id"].to_pylist()
    if len(set(ids)) != len(ids):
        first = {}
        for row, i in enumerate(ids):
            if i in first:
                raise ManifestError(f"manifest {uri}: rows {first[i]} and {row} have the same sample_id")
            first[i] = row
    splits = table["split"].to_pylist()
    bad = [(i, s) for i, s in enumerate(splits) if s not in SPLITS]
    if bad:
        row, value = bad[0]
        raise ManifestError(f"manifest {uri}: row {row} has split '{value}'; allowed: {list(SPLITS)}")
    _check_present(table, "patient_id", uri)
    check_patient_splits(table["patient_id"].to_pylist(), splits, uri)
    if task_type in ("multilabel", "binary"):
        for col in label_columns:
            _check_values(table, col, uri, allowed=(0, 1))
    elif task_type == "multiclass" and label_columns:
        allowed = tuple(range(num_classes)) if num_classes else None
        _check_values(table, label_columns[0], uri, allowed=allowed)


def _check_present(table: pa.Table, col: str, uri: str) -> None:
    """Every row names its patient: splits, bootstrap resamples and paired tests are by patient."""
    for row, v in enumerate(table[col].to_pylist()):
        if v is None or (isinstance(v, float) and np.isnan(v)) or not str(v).strip():
            raise ManifestError(f"manifest {uri}: row {row} has an empty {col}; every row needs one "
                                "(splits and confidence intervals are by patient)")


def _check_values(table: pa.Table, col: str, uri: str, allowed: Optional[Iterable[int]]) -> None:
    values = table[col].to_pylist()
    for row, v in enumerate(values):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            raise ManifestError(f"manifest {uri}: row {row} column '{col}' is empty")
        if allowed is not None and v not in allowed:
            raise ManifestError(
                f"manifest {uri}: row {row} column '{col}' has value {v!r}; allowed: {list(allowed)}"
            )


def check_roots(uri: str, data_roots: Sequence[str] = ()) -> None:
    """A relative uri (or mask_uri) must stay inside the manifest's directory tree, through '..' or a
    symlink alike, unless it lands in one of data_roots: a manifest cannot quietly read files it does
    not hold. Absolute uris are the manifest's explicit choice and stay allowed. The error names the
    row and the column, never the uri (file names may carry patient ids)."""
    import posixpath

    base = storage.parent(storage.normalize(uri))
    remote = storage.is_remote(base)
    real = (lambda p: posixpath.normpath(p)) if remote else os.path.realpath  # noqa: E731
    allowed = [real(storage.normalize(r)) for r in (base, *data_roots)]
    table = storage.read_parquet(uri)
    for col in ("uri", "mask_uri"):
        if col not in table.column_names:
            continue
        for row, value in enumerate(table[col].to_pylist()):
            if value is None or storage.is_remote(value) or str(value).startswith("file://") or os.path.isabs(str(value)):
                continue
            target = real(storage.join(base, str(value)))
            if not any(target == root or target.startswith(root.rstrip("/") + "/") for root in allowed):
                raise ManifestError(f"manifest {uri}: row {row}: its relative {col} leaves the manifest's directory "
                                    "(through '..' or a symlink); list where it leads in data_roots to allow it")


def check_patient_splits(patients: Sequence[str], splits: Sequence[str], uri: str = "manifest") -> None:
    first = {}
    for row, (p, s) in enumerate(zip(patients, splits)):
        split, where = first.setdefault(p, (s, row))
        if split != s:
            raise ManifestError(f"{uri}: the patient of rows {where} and {row} is in both '{split}' and '{s}'; "
                                "splits must be by patient")


def content_hash(table: pa.Table) -> str:
    """Hash of what determines the embeddings of a manifest: its sample ids and image uris."""
    import hashlib

    h = hashlib.sha256()
    for col in ("sample_id", "uri"):
        for v in table[col].to_pylist():
            h.update(str(v).encode())
            h.update(b"\0")
    return h.hexdigest()[:16]

