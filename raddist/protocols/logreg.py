"""L2-regularised logistic regression (scikit-learn) on frozen features.

Features are standardised with a StandardScaler fitted on the fitting set. Multiclass: one multinomial
model; multilabel and binary: one model per label column (one-vs-rest). The inverse regularisation C
is chosen on validation (macro AUROC; ties go to the smaller C), refitted on train+val, and scores
test once.
"""

from __future__ import annotations

from typing import List

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


def _fit_proba(x_fit: np.ndarray, y: np.ndarray, x_query: np.ndarray, c: float, max_iter: int) -> np.ndarray:
    """P(y = 1) for one label column, or (Nq, classes) for a class-index vector; x already scaled.

    A column with one value in the fitting set has nothing to learn: its score is that value.
    """
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(y)) < 2:
        return np.full(len(x_query), float(y[0]))
    model = LogisticRegression(C=c, max_iter=max_iter).fit(x_fit, y)
    return model.predict_proba(x_query)[:, 1]


def fit_predict(
    inputs: FrozenInputs, x_fit: np.ndarray, labels: np.ndarray, x_query: np.ndarray, c: float, max_iter: int
) -> np.ndarray:
    """(Nq, C) probabilities of a model with inverse regularisation c, fitted on (x_fit, labels)."""
    from sklearn.linear_model import LogisticRegression

    if inputs.task_type != "multiclass":
        columns = label_matrix(inputs, labels)
        return np.stack([_fit_proba(x_fit, col, x_query, c, max_iter) for col in columns.T], axis=1)
    probs = np.zeros((len(x_query), num_classes(inputs, labels)))
    present = np.unique(labels)
    if len(present) < 2:
        probs[:, present] = 1.0
        return probs
    model = LogisticRegression(C=c, max_iter=max_iter).fit(x_fit, labels)
    probs[:, model.classes_.astype(int)] = model.predict_proba(x_query)  # classes absent from the fit stay 0
    return probs


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

    def scores(split):
        x_fit, x_split = _scaled(x(fit_set), x(split))
        return fit_predict(inputs, x_fit, fit_set.labels, x_split, c, params.max_iter)

    return scored(inputs.splits, scores, selected, val_score)
