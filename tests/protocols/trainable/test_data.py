"""The trainable protocols' data: splits (val carved by patient), decoding once, augmentation."""

import numpy as np
import pytest
import torch

from raddist.protocols.trainable.data import assign_splits, augment, decode_splits
from tests.protocols.trainable import write_halves


def test_augment_keeps_shape_and_varies_per_image():
    torch.manual_seed(0)
    x = torch.arange(64.0).repeat(64, 1).expand(3, 3, 64, 64).contiguous()  # a horizontal ramp
    out = augment(x)
    assert out.shape == x.shape
    assert not (torch.allclose(out[0], out[1]) and torch.allclose(out[1], out[2]))
    assert out.min() >= x.min() - 1e-4 and out.max() <= x.max() + 1e-4  # a resample: no new extremes


def test_val_is_carved_from_train_patients_never_test(tmp_path):
    table = write_halves(str(tmp_path), n_patients=20, splits=("train", "test"), fractions=(0.75, 0.25))
    a, b = assign_splits(table, seed=3), assign_splits(table, seed=3)
    assert a.equals(b)  # seeded
    before = np.asarray(table["split"].to_pylist())
    after = np.asarray(a["split"].to_pylist())
    patients = np.asarray(table["patient_id"].to_pylist())
    assert (after == "val").any()
    assert (before[after == "val"] == "train").all()
    assert (after[before == "test"] == "test").all()
    assert not set(patients[after == "val"]) & set(patients[after == "train"])


def test_decode_splits_drops_and_counts_unreadable_rows(ray_local, tmp_path):
    table = write_halves(str(tmp_path), n_patients=8)
    broken = 2  # the first two train rows point at files that are not images
    uris = table["uri"].to_pylist()
    train_rows = [i for i, s in enumerate(table["split"].to_pylist()) if s == "train"][:broken]
    for i in train_rows:
        with open(uris[i], "wb") as f:
            f.write(b"not a png")
    datasets, rows, dropped = decode_splits(table, "binary", ["top"], {"size": 32})
    n_train = table["split"].to_pylist().count("train")
    assert dropped == {"train": broken, "val": 0, "test": 0}
    assert datasets["train"].count() == n_train - broken and rows["train"].num_rows == n_train
    batch = datasets["test"].take_batch(100)
    assert batch["image"].shape[1:] == (32, 32) and batch["image"].dtype == np.uint8
    labels = np.asarray(rows["test"]["top"].to_pylist())[batch["index"]]
    np.testing.assert_array_equal(batch["label"].reshape(-1), labels)


def test_decode_splits_refuses_a_split_with_nothing_decodable(ray_local, tmp_path):
    table = write_halves(str(tmp_path), n_patients=8)
    for uri, split in zip(table["uri"].to_pylist(), table["split"].to_pylist()):
        if split == "val":
            with open(uri, "wb") as f:
                f.write(b"")
    with pytest.raises(ValueError, match="no decodable 'val' images"):
        decode_splits(table, "binary", ["top"], {"size": 32})
