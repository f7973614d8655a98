import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from raddist.protocols import logreg
from raddist.protocols.selection import train_plus_val

from .synthetic import auroc, blob_inputs


@pytest.mark.parametrize("task_type,n_classes", [("multiclass", 3), ("multilabel", 4), ("binary", 1)])
def test_separable_blobs_are_learned(task_type, n_classes):
    inputs = blob_inputs(task_type, n_classes, sizes=(200, 60, 80), separation=1.0)
    pred = logreg.run(inputs, logreg.Params(features="cls_all"), seed=0)
    assert pred.scores.shape == (80, n_classes)
    assert auroc(inputs, pred) > 0.95
    assert pred.selected["C"] in logreg.Params().cs and pred.selected["fit_size"] == 260


def test_multiclass_test_scores_equal_a_plain_sklearn_refit_on_train_plus_val():
    inputs = blob_inputs("multiclass", 3, sizes=(90, 30, 40), separation=0.3)
    pred = logreg.run(inputs, logreg.Params(), seed=0)
    fit = train_plus_val(inputs.splits["train"], inputs.splits["val"])
    scaler = StandardScaler().fit(fit.features["cls"][:, -8:])
    model = LogisticRegression(C=pred.selected["C"], max_iter=1000).fit(scaler.transform(fit.features["cls"][:, -8:]), fit.labels)
    want = model.predict_proba(scaler.transform(inputs.splits["test"].features["cls"][:, -8:]))
    np.testing.assert_allclose(pred.scores, want, atol=1e-10)


def test_multilabel_is_one_model_per_label():
    inputs = blob_inputs("multilabel", 3, sizes=(60, 0, 20), separation=0.5)
    x, labels, q = inputs.splits["train"].features["cls"], inputs.splits["train"].labels, inputs.splits["test"].features["cls"]
    got = logreg.fit_predict(inputs, x, labels, q, 0.1, 1000)
    for col in range(3):
        want = LogisticRegression(C=0.1, max_iter=1000).fit(x, labels[:, col]).predict_proba(q)[:, 1]
        np.testing.assert_allclose(got[:, col], want, atol=1e-10)


def test_label_with_one_value_scores_constant():
    inputs = blob_inputs("multilabel", 2, sizes=(30, 0, 5))
    labels = inputs.splits["train"].labels.copy()
    labels[:, 1] = 0
    x = inputs.splits["train"].features["cls"]
    got = logreg.fit_predict(inputs, x, labels, x[:5], 1.0, 100)
    np.testing.assert_array_equal(got[:, 1], 0.0)


def test_class_absent_from_fit_scores_zero():
    inputs = blob_inputs("multiclass", 4, sizes=(40, 0, 5))
    split = inputs.splits["train"]
    keep = split.labels != 3
    got = logreg.fit_predict(inputs, split.features["cls"][keep], split.labels[keep], split.features["cls"][:5], 1.0, 200)
    assert got.shape == (5, 4)
    np.testing.assert_array_equal(got[:, 3], 0.0)
    np.testing.assert_allclose(got.sum(1), 1.0)


@pytest.mark.parametrize("task_type,n_classes", [("multiclass", 3), ("multilabel", 2)])
def test_the_chosen_model_is_fitted_once_for_test_and_every_further_test_set(task_type, n_classes, monkeypatch):
    import dataclasses

    from raddist.protocols.selection import EXTRA_TEST

    fits = []
    original = LogisticRegression.fit
    monkeypatch.setattr(LogisticRegression, "fit", lambda self, *a, **k: fits.append(1) or original(self, *a, **k))
    inputs = blob_inputs(task_type, n_classes, sizes=(60, 30, 40))
    params = logreg.Params(cs=[0.1, 1.0])
    extra = {f"{EXTRA_TEST}{name}": inputs.splits["test"].subset(np.arange(i, 40, 3)) for i, name in enumerate("abc")}
    pred = logreg.run(dataclasses.replace(inputs, splits={**inputs.splits, **extra}), params, seed=0)
    # one model per C on train for selection, then the chosen C once on train+val: per label column
    models = 1 if task_type == "multiclass" else n_classes
    assert len(fits) == (len(params.cs) + 1) * models and sorted(pred.extra) == ["a", "b", "c"]
    np.testing.assert_allclose(pred.extra["b"].scores, pred.scores[np.arange(1, 40, 3)], atol=1e-12)
