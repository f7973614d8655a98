"""Weighted kNN on frozen features, as DINO's kNN classifier.

Cosine similarity on L2-normalised features; each of the k nearest neighbours votes for its labels
with weight exp(similarity / T). A class's score is its share of the vote: one-hot labels for
multiclass (rows sum to 1), per-label vote fractions for multilabel and binary.

k is chosen on validation (macro AUROC) with the train split as the neighbour bank; the chosen k then
votes over train+val as the bank and scores test once. Exact search (see neighbours.py).
"""

from __future__ import annotations

from typing import List, Tuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt

from raddist.protocols.base import CLASSIFICATION, FrozenInputs, Prediction
from raddist.protocols.features import FeatureSet, features_and_targets, named_features
from raddist.protocols.registry import register_protocol
from raddist.protocols.selection import macro_auroc, select_best, to_prediction, train_plus_val, train_val_split


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ks: List[PositiveInt] = Field(default=[10, 20, 100, 200], min_length=1)  # clipped to the bank size
    temperature: PositiveFloat = 0.07
    features: FeatureSet = "cls_last"
    chunk_size: PositiveInt = 1024  # queries per similarity block; changes memory, not results


def clip_ks(ks: List[int], bank_size: int) -> List[int]:
    """The distinct k values a bank of this size allows, smallest first (ties go to the smaller k)."""
    return sorted({min(k, bank_size) for k in ks})


def vote(sims: np.ndarray, idx: np.ndarray, bank_targets: np.ndarray, k: int, temperature: float) -> np.ndarray:
    """Class scores from the k nearest of precomputed (sorted) neighbours."""
    from raddist.protocols.neighbours import neighbour_sum

    s = sims[:, :k].astype(np.float64)
    weights = np.exp((s - s[:, :1]) / temperature)  # shifting by the nearest keeps the ratios, avoids overflow
    return neighbour_sum(idx[:, :k], weights, bank_targets) / weights.sum(axis=1, keepdims=True)


def select_k(
    bank_x: np.ndarray, bank_targets: np.ndarray, val_x: np.ndarray, val_targets: np.ndarray, params: Params
) -> Tuple[int, float]:
    """(best k, its validation macro AUROC): one neighbour search at the largest k serves every k."""
    from raddist.protocols.neighbours import topk_cosine

    ks = clip_ks(params.ks, len(bank_x))
    sims, idx = topk_cosine(val_x, bank_x, ks[-1], params.chunk_size)
    k, score, _ = select_best(ks, lambda k: macro_auroc(val_targets, vote(sims, idx, bank_targets, k, params.temperature)))
    return k, score


def predict(bank_x: np.ndarray, bank_targets: np.ndarray, query_x: np.ndarray, k: int, params: Params) -> np.ndarray:
    from raddist.protocols.neighbours import topk_cosine

    k = min(k, len(bank_x))
    sims, idx = topk_cosine(query_x, bank_x, k, params.chunk_size)
    return vote(sims, idx, bank_targets, k, params.temperature)


@register_protocol("knn", task_types=CLASSIFICATION, params=Params)
def run(inputs: FrozenInputs, params: Params, seed: int) -> Prediction:
    train, val = train_val_split(inputs, seed)
    test = inputs.splits["test"]

    def xy(split):
        return features_and_targets(inputs, split, params.features)

    k, val_score = select_k(*xy(train), *xy(val), params)
    # Selection is done: the chosen k now votes over train+val, and test is scored once.
    bank_x, bank_targets = xy(train_plus_val(train, val))
    scores = predict(bank_x, bank_targets, named_features(inputs, test, params.features), k, params)
    selected = {"k": k, "temperature": params.temperature, "features": params.features, "bank": len(bank_x)}
    return to_prediction(test, scores, selected, val_score)
