"""L2-regularised logistic regression (scikit-learn) on frozen features.

Features are standardised with a StandardScaler fitted on the fitting set. Multiclass: one multinomial
model; multilabel and binary: one model per label column (one-vs-rest). The inverse regularisation C
is chosen on validation (macro AUROC; ties go to the smaller C), refitted on train+val, and scores
test once.
"""

from __future__ import annotations

from typing import Callable, List

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt

from raddist.protocols.base import CLASSIFICATION, FrozenInputs, Prediction
from raddist.protocols.features import FeatureSet, label_matrix, named_features, num_classes
from raddist.protocols.registry import register_protocol
from raddist.protocols.selection import macro_auroc, scored, select_best, train_plus_val, train_val_split


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cs: List[PositiveFloat] = Field(default=[1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0], min_length=1)
    features: FeatureSet = "cls_last"
    max_iter: PositiveInt = 1000


def _fit_column(x_fit: np.ndarray, y: np.ndarray, c: float, max_iter: int) -> Callable[[np.ndarray], np.ndarray]:
    """x_query -> P(y = 1) for one label column, x already scaled.

    A column with one value in the fitting set has nothing to learn: its score is that value.
    """
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(y)) < 2:
        return lambda x_query: np.full(len(x_query), float(y[0]))
    model = LogisticRegression(C=c, max_iter=max_iter).fit(x_fit, y)
    return lambda x_query: model.predict_proba(x_query)[:, 1]


def fit(inputs: FrozenInputs, x_fit: np.ndarray, labels: np.ndarray, c: float,
        max_iter: int) -> Callable[[np.ndarray], np.ndarray]:
    """A model with inverse regularisation c, fitted once on (x_fit, labels): x_query -> (Nq, C) probabilities."""
    from sklearn.linear_model import LogisticRegression

    if inputs.task_type != "multiclass":
        columns = [_fit_column(x_fit, col, c, max_iter) for col in label_matrix(inputs, labels).T]
        return lambda x_query: np.stack([column(x_query) for column in columns], axis=1)
    n_classes, present = num_classes(inputs, labels), np.unique(labels)
    model = None if len(present) < 2 else LogisticRegression(C=c, max_iter=max_iter).fit(x_fit, labels)

    def predict(x_query: np.ndarray) -> np.ndarray:
        probs = np.zeros((len(x_query), n_classes))
        if model is None:
            probs[:, present] = 1.0
        else:  # classes absent from the fit stay 0
            probs[:, model.classes_.astype(int)] = model.predict_proba(x_query)
        return probs

    return predict


def fit_predict(
    inputs: FrozenInputs, x_fit: np.ndarray, labels: np.ndarray, x_query: np.ndarray, c: float, max_iter: int
) -> np.ndarray:
    """(Nq, C) probabilities of a model with inverse regularisation c, fitted on (x_fit, labels)."""
    return fit(inputs, x_fit, labels, c, max_iter)(x_query)


def _scaled(x_fit: np.ndarray, x_query: np.ndarray):
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_fit)
    return scaler.transform(x_fit), scaler.transform(x_query)


@register_protocol("logreg", task_types=CLASSIFICATION, params=Params)
def run(inputs: FrozenInputs, params: Params, seed: int) -> Prediction:
    train, val = train_val_split(inputs, seed)

    def x(split):
        return named_features(inputs, split, params.features)

    x_train, x_val = _scaled(x(train), x(val))
    val_targets = label_matrix(inputs, val.labels)
    c, val_score, _ = select_best(
        sorted(set(params.cs)),
        lambda c: macro_auroc(val_targets, fit_predict(inputs, x_train, train.labels, x_val, c, params.max_iter)),
    )
    # Selection is done: refit the chosen C on train+val (scaler included) and score test once.
    fit_set = train_plus_val(train, val)
    selected = {"C": c, "features": params.features, "fit_size": len(fit_set)}

    from sklearn.preprocessing import StandardScaler

    x_fit = x(fit_set)
    scaler = StandardScaler().fit(x_fit)
    model = fit(inputs, scaler.transform(x_fit), fit_set.labels, c, params.max_iter)
    # fitted once: test and every further test set are scored by the same model
    return scored(inputs.splits, lambda split: model(scaler.transform(x(split))), selected, val_score)
