"""The catalog adapters' shared pieces (raddist.data.catalog.common): seeded patient splits with
counts or fractions and strata, file lookup in a release, mask binarisation, split hashes."""

from collections import Counter

import numpy as np
import pytest

from raddist.data.catalog.common import CatalogError, binarize, find_file, split_hash, split_patients, stem


def test_split_counts_fractions_and_seeds():
    patients = [f"p{i:02d}" for i in range(20)] * 3  # each patient has three images
    split = split_patients(patients, val_size=3, test_size=0.25, seed=0)
    assert len(split) == 20 and Counter(split.values()) == {"train": 12, "val": 3, "test": 5}
    assert split_patients(patients, 3, 0.25, seed=0) == split  # seeded
    assert split_patients(patients, 3, 0.25, seed=1) != split
    assert Counter(split_patients(patients, 0, 0.01, seed=0).values()) == {"train": 19, "test": 1}  # at least one


def test_strata_are_spread_over_the_splits():
    patients = [f"p{i:02d}" for i in range(40)]
    strata = {p: "tumour" if i < 10 else "healthy" for i, p in enumerate(patients)}  # 1 in 4
    split = split_patients(patients, val_size=8, test_size=8, seed=3, strata=strata)
    for part in ("val", "test"):
        members = [p for p, s in split.items() if s == part]
        assert Counter(strata[p] for p in members) == {"tumour": 2, "healthy": 6}


@pytest.mark.parametrize("val, test, message", [
    (5, 5, "cannot take 5 test and 5 val patients out of 10"),
    (1.0, 1, "val_size as a fraction must be below 1; got 1.0"),
    (-1, 1, "val_size must be a patient count"),
    (True, 1, "val_size must be a patient count"),
])
def test_impossible_splits_say_what_to_pass(val, test, message):
    with pytest.raises(CatalogError, match=message):
        split_patients([f"p{i}" for i in range(10)], val, test)


def test_find_file_prefers_the_shallowest_and_refuses_a_tie():
    files = ["r/a/Data_Entry.csv", "r/Data_Entry.csv", "r/b/c/labels.csv", "r/x/labels.csv", "r/y/labels.csv"]
    assert find_file(files, "Data_Entry.csv") == "r/Data_Entry.csv"
    assert find_file(files, "missing.csv", "Data_Entry.csv") == "r/Data_Entry.csv"  # any of the names
    with pytest.raises(CatalogError, match="labels.csv is ambiguous: r/x/labels.csv and r/y/labels.csv"):
        find_file(files, "labels.csv")
    with pytest.raises(CatalogError, match="train.csv or valid.csv not found"):
        find_file(files, "train.csv", "valid.csv")


def test_stem_binarize_and_split_hash():
    assert [stem(u) for u in ("s3://b/img0001.nii.gz", "x/CHNCXR_0001_0.png", "a.b.c")] == ["img0001", "CHNCXR_0001_0", "a.b"]
    assert binarize(np.array([0, 1, 1])).tolist() == [False, True, True]
    assert binarize(np.array([0, 127, 128, 255])).tolist() == [False, False, True, True]  # above half the maximum
    assert not binarize(np.zeros((2, 2), np.uint8)).any() and binarize(np.zeros(0)).shape == (0,)
    assert split_hash(["b", "a"]) == split_hash(["a", "b"]) != split_hash(["a", "b", "c"])
    assert len(split_hash([])) == 64


def test_subgroup_values_are_coarse_and_unknowns_null():
    from raddist.data.catalog.common import age_band, sex

    assert [sex(v) for v in ("F", "Female", "male", " M ", "Unknown", None, "")] == ["F", "F", "M", "M", None, None, None]
    assert [age_band(v) for v in (0, 17, 18, 39.5, 40, 64, 65, 97, 412, -1, "x", None)] == \
        ["0-17", "0-17", "18-39", "18-39", "40-64", "40-64", "65+", "65+", None, None, None, None]
