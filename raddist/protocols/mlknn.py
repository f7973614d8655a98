"""ML-kNN (Zhang & Zhou, "ML-KNN: A lazy learning approach to multi-label learning", 2007).

For each label l, with smoothing s (1 in the paper) and m bank samples:
  prior      P(H1_l)        = (s + #positives of l) / (2s + m)
  likelihood P(E_j | H1_l)  = (s + c1[j, l]) / (s(k+1) + sum_j c1[j, l])
where c1[j, l] counts the positives of l having exactly j positives of l among their k nearest bank
samples of OTHER patients (leave-one-patient-out: a patient's follow-up studies, which NIH has many of,
would otherwise vote for each other); c0 the same for the negatives. A query's score for l is the
posterior P(H1_l | E_j) with j its neighbours' count. Neighbours: exact cosine (neighbours.py).

k is chosen on validation (macro AUROC) with train as the bank; the chosen k is refitted on train+val
and scores test once, as in knn.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt

from raddist.protocols.base import FrozenInputs, Prediction
from raddist.protocols.features import FeatureSet, features_and_targets, named_features
from raddist.protocols.knn import clip_ks
from raddist.protocols.registry import register_protocol
from raddist.protocols.selection import macro_auroc, scored, select_best, train_plus_val, train_val_split

TASK_TYPES = ("multilabel",)


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ks: List[PositiveInt] = Field(default=[5, 10, 20, 50], min_length=1)  # clipped to the bank size - 1
    smoothing: PositiveFloat = 1.0
    features: FeatureSet = "cls_last"
    chunk_size: PositiveInt = 1024
    # the reference code counted each training sample among its own k neighbours when it built the
    # counts (scikit-multilearn's MLkNN with ignore_first_neighbours=0); the paper's ML-kNN leaves it out
    count_self: bool = False


@dataclass
class Model:
    k: int
    prior: np.ndarray  # (L,) P(H1_l)
    like1: np.ndarray  # (k+1, L) P(E_j | H1_l)
    like0: np.ndarray  # (k+1, L) P(E_j | H0_l)


def _counts(idx: np.ndarray, bank_targets: np.ndarray) -> np.ndarray:
    """How many of each row's neighbours carry each label: (Nq, L) ints."""
    from raddist.protocols.neighbours import neighbour_sum

    return np.rint(neighbour_sum(idx, np.ones(idx.shape), bank_targets)).astype(int)


def fit(loo_idx: np.ndarray, targets: np.ndarray, k: int, smoothing: float = 1.0) -> Model:
    """loo_idx: each bank sample's nearest other bank samples, (m, >= k); targets: (m, L) in {0, 1}."""
    s = smoothing
    counts = _counts(loo_idx[:, :k], targets)
    cols = np.broadcast_to(np.arange(targets.shape[1]), counts.shape)
    c1 = np.zeros((k + 1, targets.shape[1]))
    c0 = np.zeros_like(c1)
    np.add.at(c1, (counts, cols), targets)
    np.add.at(c0, (counts, cols), 1 - targets)
    return Model(
        k=k,
        prior=(s + targets.sum(axis=0)) / (2 * s + len(targets)),
        like1=(s + c1) / (s * (k + 1) + c1.sum(axis=0)),
        like0=(s + c0) / (s * (k + 1) + c0.sum(axis=0)),
    )


def posterior(model: Model, idx: np.ndarray, bank_targets: np.ndarray) -> np.ndarray:
    """P(H1_l | E) for queries whose bank neighbours are idx (nearest first)."""
    counts = _counts(idx[:, : model.k], bank_targets)
    cols = np.arange(bank_targets.shape[1])
    p1 = model.prior * model.like1[counts, cols]
    p0 = (1 - model.prior) * model.like0[counts, cols]
    return p1 / (p1 + p0)


def fit_predict(bank_x, bank_targets, query_x, ks: List[int], params: Params, bank_patients=None):
    """One ML-kNN per k in ks over one neighbour search: a generator of (k, query posteriors).
    bank_patients: each bank row's patient, left out with the row (unless params.count_self)."""
    from raddist.protocols.neighbours import topk_cosine

    loo_idx = topk_cosine(bank_x, bank_x, ks[-1], params.chunk_size, exclude_self=not params.count_self,
                          groups=None if params.count_self else bank_patients)[1]
    query_idx = topk_cosine(query_x, bank_x, ks[-1], params.chunk_size)[1]
    for k in ks:
        yield k, posterior(fit(loo_idx, bank_targets, k, params.smoothing), query_idx, bank_targets)


def _bank_size(split, params: Params) -> int:
    """The most neighbours a bank sample has once its own patient is left out (itself, count_self)."""
    if params.count_self:
        return len(split.patient_ids)
    return len(split.patient_ids) - int(np.unique(split.patient_ids, return_counts=True)[1].max())


@register_protocol("mlknn", task_types=TASK_TYPES, params=Params)
def run(inputs: FrozenInputs, params: Params, seed: int) -> Prediction:
    if inputs.task_type not in TASK_TYPES:
        raise ValueError(f"mlknn applies to {TASK_TYPES} tasks, not '{inputs.task_type}'")
    train, val = train_val_split(inputs, seed)

    def xy(split):
        return features_and_targets(inputs, split, params.features)

    val_targets = xy(val)[1]
    fitted = list(fit_predict(*xy(train), xy(val)[0], clip_ks(params.ks, _bank_size(train, params)), params,
                              train.patient_ids))
    (k, _), val_score, _ = select_best(fitted, lambda kp: macro_auroc(val_targets, kp[1]))
    # Selection is done: refit the chosen k on train+val and score test once.
    bank = train_plus_val(train, val)
    bank_x, bank_targets = xy(bank)
    k = min(k, _bank_size(bank, params))
    selected = {"k": k, "smoothing": params.smoothing, "features": params.features, "bank": len(bank_x)}

    def scores(split):
        [(_, split_scores)] = fit_predict(bank_x, bank_targets, named_features(inputs, split, params.features), [k],
                                          params, bank.patient_ids)
        return split_scores

    return scored(inputs.splits, scores, selected, val_score)
