"""The protocols' input and output types (raddist.protocols.base): subsets keep every column of a
row together, geometry falls back to one unit per pixel."""

import numpy as np

from raddist.protocols.base import CLASSIFICATION, TASK_TYPES, CaseGeometry, SegSplit, SplitData


def test_task_types():
    assert set(CLASSIFICATION) | {"segmentation"} == set(TASK_TYPES) and len(TASK_TYPES) == 4


def test_a_split_subset_keeps_rows_aligned():
    n = 6
    split = SplitData({"cls": np.arange(n * 2.0).reshape(n, 2), "patch_mean": np.arange(n * 3.0).reshape(n, 3)},
                      np.arange(n) % 3, np.array([f"s{i}" for i in range(n)]), np.array([f"p{i // 2}" for i in range(n)]))
    sub = split.subset(np.array([4, 1]))
    assert len(sub) == 2 and sub.sample_ids.tolist() == ["s4", "s1"] and sub.patient_ids.tolist() == ["p2", "p0"]
    assert sub.features["cls"].tolist() == [[8.0, 9.0], [2.0, 3.0]] and sub.features["patch_mean"][0].tolist() == [12, 13, 14]
    assert sub.labels.tolist() == [1, 1] and len(split) == n  # the original is untouched


def test_a_segmentation_subset_keeps_tokens_masks_and_cases_aligned():
    n = 4
    tokens = [np.full((n, 2, 3, 3), i, np.float16) * np.arange(n)[:, None, None, None] for i in (1, 2)]
    masks = np.arange(n, dtype=np.uint8)[:, None, None] * np.ones((1, 5, 5), np.uint8)
    split = SegSplit(tokens, masks, np.array(["a", "b", "c", "d"]), np.array(["p", "p", "q", "q"]),
                     np.array(["v1", "v1", "v2", "v2"]), np.array([0, 1, 0, 1]))
    sub = split.subset(np.array([3, 0]))
    assert len(sub) == 2 and sub.case_ids.tolist() == ["v2", "v1"] and sub.slice_index.tolist() == [1, 0]
    assert [float(t[0, 0, 0, 0]) for t in sub.tokens] == [3.0, 6.0] and sub.masks[:, 0, 0].tolist() == [3, 0]


def test_geometry_spacing_defaults_to_a_unit_per_pixel():
    assert CaseGeometry((1.0, 1.0), (512, 480)).source_spacing_or_pixels() == (1.0, 1.0)
    assert CaseGeometry((2.0, 1.0, 1.0), (40, 512, 512), source_spacing=[2.5, 0.7, 0.7]).source_spacing_or_pixels() \
        == (2.5, 0.7, 0.7)
