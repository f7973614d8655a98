"""Test data never influences selection: the reference study selected on test when it had no val split."""

import importlib

import numpy as np
import pytest

from raddist import protocols

from .synthetic import blob_inputs, flipped_labels, with_test

CASES = [
    ("knn", "multiclass", {}),
    ("mlknn", "multilabel", {}),
    ("linear", "multiclass", {"epochs": 5, "lrs": [1e-3, 1e-2, 1e-1]}),
    ("linear", "multilabel", {"epochs": 5, "lrs": [1e-3, 1e-2, 1e-1]}),
    ("logreg", "multiclass", {}),
    ("logreg", "multilabel", {"cs": [0.01, 1.0]}),
    ("fewshot", "multiclass", {"shots": 2, "draw": 0, "probe": "linear", "linear": {"epochs": 10, "lrs": [1e-2, 1e-1]}}),
    ("fewshot", "multilabel", {"shots": 2, "draw": 3, "probe": "knn"}),
]
IDS = [f"{name}-{task}" for name, task, _ in CASES]


def _run(name, inputs, params):
    module = protocols.get(name)
    return module.run(inputs, module.params(**params), seed=0)


def _inputs(task_type, with_val):
    return blob_inputs(task_type, 3, sizes=(120, 40 if with_val else 0, 50), separation=0.4, images_per_patient=3)


@pytest.mark.parametrize("with_val", [True, False], ids=["val", "no-val"])
@pytest.mark.parametrize("name,task_type,params", CASES, ids=IDS)
def test_poisoned_test_labels_change_nothing(name, task_type, params, with_val):
    inputs = _inputs(task_type, with_val)
    clean = _run(name, inputs, params)
    poisoned = _run(name, with_test(inputs, labels=flipped_labels(inputs)), params)
    assert poisoned.selected == clean.selected
    assert poisoned.val_score == clean.val_score  # bitwise: the same float
    np.testing.assert_array_equal(poisoned.scores, clean.scores)
    assert not np.array_equal(poisoned.labels, clean.labels)  # the poison did reach the Prediction


@pytest.mark.parametrize("name,task_type,params", CASES, ids=IDS)
def test_no_val_selection_ignores_test_features(name, task_type, params):
    inputs = _inputs(task_type, with_val=False)
    rng = np.random.default_rng(9)
    noise = {k: rng.normal(size=v.shape) for k, v in inputs.splits["test"].features.items()}
    clean = _run(name, inputs, params)
    poisoned = _run(name, with_test(inputs, features=noise), params)
    assert poisoned.selected == clean.selected and poisoned.val_score == clean.val_score
    assert not np.array_equal(poisoned.scores, clean.scores)


class _ReadLog(dict):
    """A features dict that notes every read of a column."""

    def __init__(self, data, log):
        super().__init__(data)
        self.log = log

    def __getitem__(self, key):
        self.log.append("read test")
        return super().__getitem__(key)


@pytest.mark.parametrize("with_val", [True, False], ids=["val", "no-val"])
@pytest.mark.parametrize("name,task_type,params", CASES, ids=IDS)
def test_test_features_are_read_only_after_the_last_selection(monkeypatch, name, task_type, params, with_val):
    inputs = _inputs(task_type, with_val)
    log = []
    for module_name in ("knn", "mlknn", "linear", "logreg"):
        module = importlib.import_module(f"raddist.protocols.{module_name}")
        original = module.select_best

        def logged(*args, _original=original):
            log.append("select")
            return _original(*args)

        monkeypatch.setattr(module, "select_best", logged)
    _run(name, with_test(inputs, features=_ReadLog(inputs.splits["test"].features, log)), params)
    assert "select" in log and "read test" in log
    assert log.index("read test") > max(i for i, event in enumerate(log) if event == "select")
