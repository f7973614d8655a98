"""The synthetic segmentation and volume-classification sets: layout, labels, splits, determinism."""

import hashlib
import os

import numpy as np

from raddist import storage
from raddist.data import manifest
from raddist.data.catalog import read_metadata
from raddist.data.readers import read_nifti
from raddist.data.synthetic_seg import (SEG2D_CLASSES, SEG3D_CLASSES, VOLUME_SHAPE, seg3d_affine,
                                        write_synthetic_seg)
from raddist.data.volumes import read_mask


def _by_patient_split(table):
    rows = table.to_pylist()
    manifest.check_patient_splits([r["patient_id"] for r in rows], [r["split"] for r in rows])
    return {s: {r["patient_id"] for r in rows if r["split"] == s} for s in manifest.SPLITS}


def test_seg2d_pngs_with_every_label(synthetic_seg_data):
    table = manifest.load(synthetic_seg_data["seg2d"])
    assert table.num_rows == 60 and "mask_uri" in table.column_names and "volume_id" not in table.column_names
    patients = _by_patient_split(table)
    assert all(patients.values()) and sum(map(len, patients.values())) == 30
    seen = set()
    for uri in table["mask_uri"].to_pylist()[:10]:
        mask = read_mask(uri, storage.read_bytes(uri))
        assert mask.shape == (96, 96)
        seen |= set(np.unique(mask).tolist())
    assert seen == set(range(len(SEG2D_CLASSES)))
    assert read_metadata(synthetic_seg_data["seg2d"])["class_names"] == list(SEG2D_CLASSES)


def test_seg3d_nifti_volumes_one_row_each(synthetic_seg_data):
    table = manifest.load(synthetic_seg_data["seg3d"])
    assert table.num_rows == 12 and "volume_id" in table.column_names and "slice_index" not in table.column_names
    assert {len(v) for v in _by_patient_split(table).values()} == {7, 2, 3}
    row = table.to_pylist()[0]
    hu, affine = read_nifti(row["uri"], storage.read_bytes(row["uri"]))
    labels, label_affine = read_nifti(row["mask_uri"], storage.read_bytes(row["mask_uri"]))
    assert hu.shape == labels.shape == VOLUME_SHAPE
    np.testing.assert_allclose(affine, seg3d_affine(), atol=1e-6)
    np.testing.assert_allclose(label_affine, affine)
    assert set(np.unique(labels)) == set(range(len(SEG3D_CLASSES)))
    for value in range(1, 4):  # organs are brighter than the soft tissue around them, in HU
        assert hu[labels == value].mean() > 100
    assert hu.min() < -900  # air outside the body


def test_volume_classification_is_folders_of_png_slices(synthetic_seg_data):
    table = manifest.load(synthetic_seg_data["volcls"])
    rows = table.to_pylist()
    assert table.num_rows == 40 * 8
    assert {r["volume_id"] for r in rows} == {r["patient_id"] for r in rows}
    assert sorted({r["slice_index"] for r in rows}) == list(range(8))
    for split in manifest.SPLITS:  # both classes in every split (stratified)
        assert {r["label"] for r in rows if r["split"] == split} == {0, 1}
    assert all(r["uri"].endswith(".png") and os.path.basename(os.path.dirname(os.path.dirname(r["uri"]))) in
               ("COVID", "non-COVID") for r in rows)


def test_deterministic_by_seed(tmp_path):
    a = write_synthetic_seg(str(tmp_path / "a"), seed=3)
    b = write_synthetic_seg(str(tmp_path / "b"), seed=3)

    def digest(m):
        t = manifest.load(m)
        h = hashlib.sha256()
        for col in ("uri", "mask_uri"):
            for uri in t[col].to_pylist() if col in t.column_names else []:
                h.update(storage.read_bytes(uri))
        h.update(str(t["split"].to_pylist()).encode())
        return h.hexdigest()

    assert all(digest(a[k]) == digest(b[k]) for k in a)
