import numpy as np
import pytest
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, f1_score,
                             roc_auc_score)

from raddist.metrics import (WeightedEvaluator, bootstrap_ci, bootstrap_replicates,
                             classification_metrics, group_codes, resample_counts,
                             resampled_rows, score_prediction)
from raddist.protocols.base import Prediction


def make_data(task_type, n=300, n_classes=4, seed=0, ties=False, signal=1.0):
    rng = np.random.default_rng(seed)
    if task_type == "multiclass":
        labels = rng.integers(0, n_classes, n)
        logits = rng.normal(size=(n, n_classes)) + signal * np.eye(n_classes)[labels]
        scores = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    else:
        c = 1 if task_type == "binary" else n_classes
        labels = (rng.random((n, c)) < np.linspace(0.2, 0.5, c)).astype(int)
        scores = 1 / (1 + np.exp(-(signal * (2 * labels - 1) + rng.normal(size=(n, c)))))
    if ties:
        scores = np.round(scores, 1)
    return labels, scores, [f"c{i}" for i in range(scores.shape[1])]


@pytest.mark.parametrize("ties", [False, True])
def test_auroc_matches_sklearn(ties):
    labels, scores, names = make_data("multilabel", ties=ties)
    m = classification_metrics("multilabel", labels, scores, names)
    assert m["auroc"] == pytest.approx(roc_auc_score(labels, scores, average="macro"), abs=1e-12)
    for c, name in enumerate(names):
        assert m[f"auroc/{name}"] == pytest.approx(roc_auc_score(labels[:, c], scores[:, c]),
                                                   abs=1e-12)

    labels, scores, names = make_data("multiclass", ties=ties)
    if ties:
        scores = scores / scores.sum(1, keepdims=True)  # sklearn's ovr wants rows summing to 1
    m = classification_metrics("multiclass", labels, scores, names)
    ref = roc_auc_score(labels, scores, multi_class="ovr", average="macro")
    assert m["auroc"] == pytest.approx(ref, abs=1e-12)

    labels, scores, names = make_data("binary", ties=ties)
    m = classification_metrics("binary", labels, scores, names)
    assert m["auroc"] == pytest.approx(roc_auc_score(labels[:, 0], scores[:, 0]), abs=1e-12)
    # (N,) labels and (N, 2) probabilities are accepted for binary tasks too
    m2 = classification_metrics("binary", labels[:, 0], np.c_[1 - scores, scores], names)
    assert m2 == m


def test_threshold_metrics_match_sklearn():
    labels, scores, names = make_data("multilabel", seed=1)
    m = classification_metrics("multilabel", labels, scores, names)
    pred = (scores >= 0.5).astype(int)
    assert m["accuracy"] == pytest.approx(np.mean(labels == pred))
    assert m["balanced_accuracy"] == pytest.approx(np.mean(
        [balanced_accuracy_score(labels[:, c], pred[:, c]) for c in range(4)]))
    assert m["f1_macro"] == pytest.approx(f1_score(labels, pred, average="macro"))

    labels, scores, names = make_data("binary", seed=1)
    m = classification_metrics("binary", labels, scores, names)
    pred = (scores[:, 0] >= 0.5).astype(int)
    assert m["f1_macro"] == pytest.approx(f1_score(labels[:, 0], pred))  # positive class
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels[:, 0], pred))

    labels, scores, names = make_data("multiclass", seed=1)
    m = classification_metrics("multiclass", labels, scores, names)
    pred = scores.argmax(1)
    assert m["accuracy"] == pytest.approx(accuracy_score(labels, pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, pred))
    assert m["f1_macro"] == pytest.approx(f1_score(labels, pred, average="macro"))


def test_class_without_positives_is_nan_and_left_out_of_macro():
    labels, scores, names = make_data("multilabel", seed=2)
    labels[:, 1] = 0
    m = classification_metrics("multilabel", labels, scores, names)
    assert np.isnan(m["auroc/c1"])
    defined = [roc_auc_score(labels[:, c], scores[:, c]) for c in (0, 2, 3)]
    assert m["auroc"] == pytest.approx(np.mean(defined), abs=1e-12)


@pytest.mark.parametrize("task_type", ["multilabel", "binary", "multiclass"])
@pytest.mark.parametrize("ties", [False, True])
def test_vectorised_resamples_equal_sklearn_on_materialised_rows(task_type, ties):
    # Small, imbalanced data so that some resamples lack a class: NaN handling is checked too.
    labels, scores, names = make_data(task_type, n=60, seed=3, ties=ties)
    if task_type != "multiclass":
        labels[:, 0] = 0
        labels[:3, 0] = 1
    groups = np.random.default_rng(4).integers(0, 20, len(labels))
    codes, n_groups = group_codes(groups)
    evaluate = WeightedEvaluator(task_type, labels, scores, names, codes, n_groups)
    counts = next(resample_counts(n_groups, 40, seed=5))
    fast = evaluate(counts)
    for b in range(len(counts)):
        idx = resampled_rows(codes, counts[b])
        ref = classification_metrics(task_type, labels[idx], scores[idx], names)
        per_class = [ref[f"auroc/{n}"] for n in names]  # the macro averages every class, or is undefined
        ref["auroc"] = np.nan if np.isnan(per_class).any() else np.mean(per_class)
        for k, v in ref.items():
            np.testing.assert_allclose(fast[k][b], v, atol=1e-12, rtol=0, err_msg=k)
    assert any(np.isnan(fast[f"auroc/{names[0]}"])) or task_type == "multiclass"


def test_macro_auroc_of_a_resample_averages_the_same_classes_or_is_undefined():
    """A rare finding seen in one patient: a resample that leaves that patient out used to average the other
    classes only (a different class set); now its macro AUROC is undefined and counted."""
    labels, scores, names = make_data("multilabel", n=240, seed=12)
    groups = np.arange(240) // 4  # 60 patients, 4 images each
    labels[:, 2] = (groups == 7).astype(int)  # class c2: every positive belongs to patient 7
    codes, n_groups = group_codes(groups)
    counts = np.concatenate(list(resample_counts(n_groups, 300, seed=1)))
    fast = WeightedEvaluator("multilabel", labels, scores, names, codes, n_groups)(counts)
    missing = counts[:, 7] == 0
    assert 60 < missing.sum() < 160  # about (59/60)^60 = 37% of the resamples lack patient 7
    assert np.isnan(fast["auroc"][missing]).all() and not np.isnan(fast["auroc"][~missing]).any()
    for b in np.flatnonzero(~missing)[:20]:
        idx = resampled_rows(codes, counts[b])
        assert fast["auroc"][b] == pytest.approx(roc_auc_score(labels[idx], scores[idx], average="macro"), abs=1e-12)
    pred = Prediction(sample_ids=np.arange(240), patient_ids=groups, labels=labels, scores=scores)
    rows = {r["metric"]: r for r in score_prediction("multilabel", pred, names, n_boot=300, seed=1)}
    assert rows["auroc"]["n_undefined"] == rows["auroc/c2"]["n_undefined"] == missing.sum()
    assert rows["auroc/c0"]["n_undefined"] == rows["accuracy"]["n_undefined"] == 0
    reps = bootstrap_replicates("multilabel", labels, scores, names, groups, n_boot=300, seed=1)["auroc"]
    assert (rows["auroc"]["ci_low"], rows["auroc"]["ci_high"]) == pytest.approx(
        tuple(np.percentile(reps[~np.isnan(reps)], [2.5, 97.5])))


def test_resampled_rows_keep_patients_whole():
    groups = np.array(["p1", "p2", "p1", "p3", "p2", "p1"])
    codes, n_groups = group_codes(groups)
    counts = np.array([2, 0, 1])  # p1 twice, p2 never, p3 once
    idx = resampled_rows(codes, counts)
    assert sorted(idx.tolist()) == [0, 0, 2, 2, 3, 5, 5]
    for block in resample_counts(n_groups, 10, seed=0):
        assert (block.sum(1) == n_groups).all()  # n_groups patient draws per resample


def test_ci_contains_point_estimate_and_narrows_with_more_patients():
    def width_and_ci(n_patients):
        labels, scores, names = make_data("multilabel", n=n_patients * 3, seed=6, signal=0.7)
        groups = np.repeat(np.arange(n_patients), 3)
        point = classification_metrics("multilabel", labels, scores, names)
        ci = bootstrap_ci("multilabel", labels, scores, names, groups, n_boot=500, seed=0)
        for k in ("auroc", "accuracy", "balanced_accuracy", "f1_macro"):
            assert ci[k][0] <= point[k] <= ci[k][1], k
        return ci["auroc"][1] - ci["auroc"][0]

    assert width_and_ci(400) < width_and_ci(50)


def test_resampling_is_by_patient_not_by_row():
    # 100 patients, each seen in 10 identical rows: the information is that of 100 rows, and a
    # row-level bootstrap would pretend it is 1000.
    labels, scores, names = make_data("binary", n=100, seed=7, signal=0.5)
    labels, scores = np.repeat(labels, 10, 0), np.repeat(scores, 10, 0)
    patients = np.repeat(np.arange(100), 10)
    rows = np.arange(1000)
    by_patient = bootstrap_ci("binary", labels, scores, names, patients, n_boot=500)["auroc"]
    by_row = bootstrap_ci("binary", labels, scores, names, rows, n_boot=500)["auroc"]
    assert by_patient[1] - by_patient[0] > 2 * (by_row[1] - by_row[0])


def test_same_seed_same_ci_and_other_seed_differs():
    labels, scores, names = make_data("multiclass", seed=8)
    groups = np.arange(len(labels)) // 2
    a = bootstrap_ci("multiclass", labels, scores, names, groups, n_boot=200, seed=3)
    b = bootstrap_ci("multiclass", labels, scores, names, groups, n_boot=200, seed=3)
    c = bootstrap_ci("multiclass", labels, scores, names, groups, n_boot=200, seed=4)
    assert a == b
    assert a["auroc"] != c["auroc"]


def test_replicates_have_requested_length():
    labels, scores, names = make_data("binary", n=50, seed=9)
    reps = bootstrap_replicates("binary", labels, scores, names, np.arange(50), n_boot=130)
    assert all(len(v) == 130 for v in reps.values())


def test_score_prediction_rows():
    labels, scores, names = make_data("multilabel", seed=10)
    pred = Prediction(sample_ids=np.arange(len(labels)), patient_ids=np.arange(len(labels)) // 3,
                      labels=labels, scores=scores)
    rows = score_prediction("multilabel", pred, names, n_boot=100, seed=0)
    assert [r["metric"] for r in rows] == ["auroc", "accuracy", "balanced_accuracy",
                                           "f1_macro"] + [f"auroc/{n}" for n in names]
    point = classification_metrics("multilabel", labels, scores, names)
    for r in rows:
        assert r["value"] == point[r["metric"]]
        assert r["ci_low"] <= r["value"] <= r["ci_high"]
    no_ci = score_prediction("multilabel", pred, names, n_boot=0)
    assert np.isnan(no_ci[0]["ci_low"])
    with pytest.raises(ValueError, match="scored per case"):
        score_prediction("segmentation", pred, names)


def test_bad_shapes_are_errors():
    labels, scores, names = make_data("multilabel")
    with pytest.raises(ValueError, match="class names"):
        classification_metrics("multilabel", labels, scores, names[:2])
    with pytest.raises(ValueError, match="shape"):
        classification_metrics("multilabel", labels[:, :2], scores, names)
