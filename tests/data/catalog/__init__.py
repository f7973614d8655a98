"""Helpers that write miniature replicas of the official layouts, and check a prepared manifest."""

from __future__ import annotations

import json
import os

import numpy as np

from raddist import storage
from raddist.data import catalog, manifest


def write_image(path, value=0, size=(8, 8), array=None):
    """A tiny grayscale PNG or JPEG (format from the suffix)."""
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = np.full(size, value, np.uint8) if array is None else array
    Image.fromarray(data).save(path)
    return path


def write_nifti(path, shape=(6, 6, 4), value=0, dtype=np.int16):
    import nibabel as nib

    os.makedirs(os.path.dirname(path), exist_ok=True)
    nib.save(nib.Nifti1Image(np.full(shape, value, dtype), np.eye(4)), path)
    return path


def write_text(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return path


def write_json(path, obj):
    return write_text(path, json.dumps(obj))


def load(uri):
    """(rows as a pandas frame with uris resolved, metadata) of a prepared manifest."""
    return manifest.load(uri).to_pandas(), catalog.read_metadata(uri)


def check_manifest(uri, name):
    """What every prepared manifest must satisfy; returns (frame, metadata)."""
    frame, meta = load(uri)
    info = catalog.get(name)
    assert meta["dataset"] == name and meta["task_type"] == info.task_type
    assert meta["label_columns"] == list(info.labels)
    manifest.check_patient_splits(frame["patient_id"].tolist(), frame["split"].tolist())
    for split in manifest.SPLITS:
        ids = frame.loc[frame["split"] == split, "sample_id"].tolist()
        assert ids, f"{split} is empty"
        assert meta["split_hashes"][split] == catalog.split_hash(ids)
        assert meta["split_counts"][split] == len(ids)
    for col in ("uri", "mask_uri"):
        if col in frame:
            missing = [u for u in frame[col].dropna() if not storage.exists(u)]
            assert not missing, missing[:3]
    return frame, meta
