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


def write_montgomery(root, n=6):
    """Montgomery's layout: n chest X-rays, each with a left and a right lung mask."""
    base = root / "NLM-MontgomeryCXRSet" / "MontgomerySet"
    left, right = np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8)
    left[:, 5:] = 255  # the patient's left lung is on the image's right
    right[:, :3] = 255
    for i in range(1, n + 1):
        name = f"MCUCXR_{i:04d}_{i % 2}.png"
        write_image(str(base / "CXR_png" / name), value=100)
        write_image(str(base / "ManualMask" / "leftMask" / name), array=left)
        write_image(str(base / "ManualMask" / "rightMask" / name), array=right)
    return str(root)


SARS_SLICES = ["1.png", "2.png", "10.png"]  # natural order: 1, 2, 10


def write_sars(root, classes=("COVID", "non-COVID"), patients=4):
    """SARS-CoV-2 CT's layout: class folders of patient folders of PNG slices (SARS_SLICES)."""
    for cls in classes:
        for p in range(1, patients + 1):
            for k, name in enumerate(SARS_SLICES):
                write_image(str(root / cls / f"Patient {p}" / name), value=k)
    return str(root)


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
