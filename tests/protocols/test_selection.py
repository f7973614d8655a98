import math

import numpy as np
import pytest

from raddist.protocols.features import column_range
from raddist.protocols.selection import carve_val, macro_auroc, select_best, train_plus_val, train_val_split

from .synthetic import blob_inputs


def test_manifest_val_is_used_as_is():
    inputs = blob_inputs(sizes=(40, 20, 10))
    train, val = train_val_split(inputs, seed=0)
    assert train is inputs.splits["train"] and val is inputs.splits["val"]


def test_carved_val_is_by_patient_and_from_train_only():
    inputs = blob_inputs(sizes=(200, 0, 30), images_per_patient=4)
    train, val = train_val_split(inputs, seed=3)
    all_train = inputs.splits["train"]
    assert not set(train.patient_ids) & set(val.patient_ids)
    assert set(val.patient_ids) <= set(all_train.patient_ids)
    assert not set(val.sample_ids) & set(inputs.splits["test"].sample_ids)
    assert sorted(np.concatenate([train.sample_ids, val.sample_ids])) == sorted(all_train.sample_ids)
    assert len(set(val.patient_ids)) == round(0.15 * 50)  # 50 patients
    np.testing.assert_array_equal(train_val_split(inputs, seed=3)[1].sample_ids, val.sample_ids)
    assert set(train_val_split(inputs, seed=4)[1].patient_ids) != set(val.patient_ids)


def test_carve_needs_two_patients():
    inputs = blob_inputs(sizes=(2, 0, 2), images_per_patient=2)
    with pytest.raises(ValueError, match="fewer than 2 patients"):
        carve_val(inputs.splits["train"], seed=0)


def test_train_plus_val_concatenates_every_field():
    inputs = blob_inputs(sizes=(10, 4, 4))
    both = train_plus_val(inputs.splits["train"], inputs.splits["val"])
    assert len(both) == 14 and both.features["patch_mean"].shape == (14, 8)
    np.testing.assert_array_equal(both.labels[10:], inputs.splits["val"].labels)


def test_macro_auroc_skips_single_class_columns():
    targets = np.array([[0, 1, 0], [1, 1, 0], [0, 1, 0], [1, 1, 0]])
    scores = np.array([[0.1, 0.5, 0.2], [0.9, 0.5, 0.3], [0.8, 0.5, 0.1], [0.7, 0.5, 0.9]])
    assert macro_auroc(targets, scores) == pytest.approx(0.75)  # column 0 only: 3 of 4 pairs ordered
    assert math.isnan(macro_auroc(targets[:, 1:], scores[:, 1:]))


def test_select_best_prefers_first_of_ties_and_never_nan():
    assert select_best([1, 2, 3], {1: 0.5, 2: 0.9, 3: 0.9}.get)[:2] == (2, 0.9)
    assert select_best(["a", "b"], {"a": float("nan"), "b": 0.1}.get)[0] == "b"
    best, score, scores = select_best(["a", "b"], lambda c: float("nan"))
    assert best == "a" and math.isnan(score) and len(scores) == 2


def test_column_ranges_of_stacked_features():
    dims = [4, 6, 8]
    assert column_range(dims, 1, False, 5) == (10, 18)
    assert column_range(dims, 3, False, 5) == (0, 18)
    assert column_range(dims, 2, True, 5) == (4, 23)
    with pytest.raises(ValueError, match="holds 3 block"):
        column_range(dims, 4, False, 5)


@pytest.mark.parametrize("protocol", ["linear", "knn", "logreg", "mlknn"])
def test_further_test_sets_are_scored_by_the_head_selected_for_test(protocol):
    """A test:<name> split (an external site, the test images corrupted) changes nothing the protocol
    selects or scores on test, and gets the selected head's scores: a subset of test gets test's rows."""
    import dataclasses

    from raddist import protocols
    from raddist.protocols.selection import EXTRA_TEST

    inputs = blob_inputs(task_type="multilabel" if protocol == "mlknn" else "multiclass", sizes=(80, 30, 40))
    record = protocols.get(protocol)
    params = record.parse({"epochs": 20} if protocol == "linear" else {})
    plain = record.run(inputs, params, 0)
    idx = np.array([3, 0, 7, 21, 39])
    extra = inputs.splits["test"].subset(idx)
    extra = dataclasses.replace(extra, labels=extra.labels * 0)  # its labels are never read to score it
    both = record.run(dataclasses.replace(inputs, splits={**inputs.splits, f"{EXTRA_TEST}site_b": extra}), params, 0)
    assert plain.extra == {} and list(both.extra) == ["site_b"]
    np.testing.assert_array_equal(both.scores, plain.scores)
    assert both.selected == plain.selected and both.val_score == plain.val_score
    np.testing.assert_allclose(both.extra["site_b"].scores, plain.scores[idx], atol=1e-9)
    assert list(both.extra["site_b"].sample_ids) == list(inputs.splits["test"].sample_ids[idx])
