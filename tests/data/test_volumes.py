"""Volumes slice by slice and back: geometry, intensity and the NIfTI round trip."""

import numpy as np
import pytest

from raddist.data.contract import PreprocessContract
from raddist.data.readers import read_nifti
from raddist.data.volumes import (CT_HU_CLIP, assemble, decode_volume, grid_spacing, nifti_bytes, resize_labels,
                                  volume_to_unit, voxel_sizes)
from raddist.errors import InputError

# an oblique, flipped, offset affine: any axis mix-up in a round trip changes it
AFFINE = np.array([[-0.7, 0.1, 0.0, 12.5], [0.05, -0.9, 0.0, -3.0], [0.0, 0.0, 3.0, 40.0], [0, 0, 0, 1.0]])


def _case(shape=(5, 20, 30), seed=0):
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint8)
    labels[1:4, 4:15, 6:20] = 1
    labels[2:5, 12:18, 22:28] = 2
    hu = rng.normal(0, 20, shape) + np.choose(labels, [-100.0, 80.0, 300.0])
    return hu.astype(np.int16), labels


def test_slices_to_volume_round_trip_keeps_shape_affine_and_labels():
    hu, labels = _case()
    size = 60  # 20 -> 60 and 30 -> 60 are integer factors: nearest there and back is exact
    vol = decode_volume("img.nii.gz", nifti_bytes(hu, AFFINE, np.int16), PreprocessContract(size=size), "CT",
                        "lab.nii.gz", nifti_bytes(labels, AFFINE))
    assert vol["image"].shape == (5, size, size) and vol["image"].dtype == np.uint8
    assert vol["shape"] == labels.shape
    np.testing.assert_allclose(vol["affine"], AFFINE, atol=1e-6)
    # as the pipeline ships them: one row per slice, in any order, reassembled by slice index
    order = np.array([3, 0, 4, 1, 2])
    volume = assemble(order, vol["mask"][order], depth=5)
    back, affine = read_nifti("pred.nii.gz", nifti_bytes(resize_labels(volume, labels.shape[-2:]), vol["affine"]))
    assert back.shape == labels.shape
    np.testing.assert_allclose(affine, AFFINE, atol=1e-6)
    np.testing.assert_array_equal(back, labels)


def test_assemble_refuses_a_missing_or_repeated_slice():
    slices = np.zeros((3, 4, 4))
    with pytest.raises(ValueError, match="missing \\[1\\]"):
        assemble([0, 2, 3], slices, depth=4)
    with pytest.raises(ValueError, match="do not tile"):
        assemble([0, 1, 1], slices, depth=3)


def test_ct_is_clipped_in_hu_over_the_whole_volume():
    contract = PreprocessContract(size=8)
    hu = np.array([[[-3000.0, -1024.0], [-212.0, 600.0]], [[2000.0, 0.0], [0.0, 0.0]]])
    unit = volume_to_unit(hu, "CT", contract)
    lo, hi = CT_HU_CLIP
    np.testing.assert_allclose(unit[0], [[0.0, 0.0], [(-212 - lo) / (hi - lo), 1.0]], atol=1e-6)
    assert unit[1, 0, 0] == 1.0
    # a fixed window in the contract wins over the modality's default
    narrow = volume_to_unit(hu, "CT", PreprocessContract(size=8, window=(0.0, 100.0)))
    assert narrow[1, 0, 1] == pytest.approx(0.5, abs=0.01)


def test_mri_is_clipped_at_its_volumes_5th_to_95th_percentile():
    v = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    unit = volume_to_unit(v, "MR", PreprocessContract(size=8))
    p5, p95 = np.percentile(v, [5, 95])
    assert unit.min() == 0 and unit.max() == 1
    assert (unit[v <= p5] == 0).all() and (unit[v >= p95] == 1).all()
    np.testing.assert_allclose(unit[5, 0, 0], (500 - p5) / (p95 - p5), rtol=1e-5)
    # other modalities: the volume's range
    np.testing.assert_allclose(volume_to_unit(v, "PT", PreprocessContract(size=8))[5, 0, 0], 500 / 999, rtol=1e-5)


def test_spacing_of_the_output_grid():
    np.testing.assert_allclose(voxel_sizes(np.diag([-0.8, 0.8, 2.5, 1.0])), [0.8, 0.8, 2.5])
    assert grid_spacing((16, 128, 64), 64, np.diag([0.5, 0.7, 2.5, 1.0])) == pytest.approx((2.5, 1.4, 0.5))
    assert grid_spacing((1, 300, 200), 100) == pytest.approx((3.0, 2.0))  # 2D: source pixels


def test_masks_must_be_class_indices_of_the_volumes_shape():
    hu, labels = _case()
    with pytest.raises(InputError, match="class indices"):
        decode_volume("i.nii", nifti_bytes(hu, AFFINE, np.int16), PreprocessContract(size=8), "CT",
                      "m.nii", nifti_bytes(labels.astype(np.float32) * 0.5, AFFINE, np.float32))
    with pytest.raises(InputError, match="differs"):
        decode_volume("i.nii", nifti_bytes(hu, AFFINE, np.int16), PreprocessContract(size=8), "CT",
                      "m.nii", nifti_bytes(labels[:4], AFFINE))


def test_resize_labels_is_nearest():
    labels = np.arange(6, dtype=np.uint8).reshape(2, 3)
    up = resize_labels(labels, (4, 6))
    assert set(np.unique(up)) == set(range(6))
    np.testing.assert_array_equal(resize_labels(up, (2, 3)), labels)


def test_source_labels_are_read_as_the_pipeline_reads_them(tmp_path):
    from raddist.data.volumes import png_bytes, read_source_labels

    _, labels = _case()
    (tmp_path / "v.nii.gz").write_bytes(nifti_bytes(labels, AFFINE))
    for z in range(len(labels)):
        (tmp_path / f"s{z}.png").write_bytes(png_bytes(labels[z]))
    np.testing.assert_array_equal(read_source_labels(str(tmp_path / "v.nii.gz"), volume=True), labels)
    np.testing.assert_array_equal(read_source_labels(str(tmp_path / "s2.png")), labels[2])
    slices = [str(tmp_path / f"s{z}.png") for z in range(len(labels))]
    np.testing.assert_array_equal(read_source_labels(slices), labels)
    assert read_source_labels(labels) is labels
