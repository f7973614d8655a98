"""Feature sets as column ranges of one stacked matrix, and labels as one (N, C) target matrix
(raddist.protocols.features)."""

import numpy as np
import pytest

from raddist.protocols.base import FrozenInputs, SplitData
from raddist.protocols.features import (features_and_targets, label_matrix, named_features, num_classes,
                                        stacked)


def inputs(task_type="multiclass", labels=None, patch=True):
    """Three images; blocks of widths 2 and 3 (cls columns 0-4), a patch mean of width 4 (5-8):
    each cell holds its column index + 10 x its row, so a slice names the columns it took."""
    cls = np.arange(5)[None, :] + 10.0 * np.arange(3)[:, None]
    features = {"cls": cls}
    if patch:
        features["patch_mean"] = np.arange(5, 9)[None, :] + 10.0 * np.arange(3)[:, None]
    labels = np.array([2, 0, 1]) if labels is None else labels
    split = SplitData(features, labels, np.array(["a", "b", "c"]), np.array(["p", "q", "r"]))
    return FrozenInputs(task_type, ["x", "y", "z"], [2, 3], {"train": split}), split


def test_named_feature_sets_are_the_documented_columns():
    inp, split = inputs()
    np.testing.assert_array_equal(stacked(split)[1], np.arange(9) + 10)
    assert named_features(inp, split, "cls_last")[0].tolist() == [2, 3, 4]  # the last block only
    assert named_features(inp, split, "cls_all")[0].tolist() == [0, 1, 2, 3, 4]
    assert named_features(inp, split, "cls_patch")[2].tolist() == [22, 23, 24, 25, 26, 27, 28]


def test_a_patch_set_without_a_patch_mean_names_what_is_missing():
    inp, split = inputs(patch=False)
    assert stacked(split).shape == (3, 5)
    with pytest.raises(ValueError, match="features='cls_patch' needs a 'patch_mean'"):
        named_features(inp, split, "cls_patch")


def test_multiclass_targets_are_one_hot():
    inp, split = inputs()
    x, y = features_and_targets(inp, split, "cls_last")
    np.testing.assert_array_equal(y, [[0, 0, 1], [1, 0, 0], [0, 1, 0]])
    assert x.shape == (3, 3) and num_classes(inp, split.labels) == 3


def test_binary_and_multilabel_targets_keep_their_columns():
    inp, split = inputs("binary", labels=np.array([1, 0, 1]))
    assert label_matrix(inp, split.labels).tolist() == [[1.0], [0.0], [1.0]] and num_classes(inp, split.labels) == 1
    multi = np.array([[1, 0, 1, 1], [0, 0, 0, 1], [1, 1, 0, 0]])
    inp, split = inputs("multilabel", labels=multi)
    assert label_matrix(inp, split.labels).dtype == float and num_classes(inp, split.labels) == 4
    np.testing.assert_array_equal(label_matrix(inp, split.labels), multi)
