"""Weighted kNN on frozen features, as DINO's kNN classifier.

Cosine similarity on L2-normalised features; each of the k nearest neighbours votes for its labels
with weight exp(similarity / T). A class's score is its share of the vote: one-hot labels for
multiclass (rows sum to 1), per-label vote fractions for multilabel and binary.

k is chosen on validation (macro AUROC) with the train split as the neighbour bank; the chosen k then
votes over train+val as the bank and scores test once. Exact search (see neighbours.py).

The reference code's settings (DINOv2's KnnModule, `mode: reference` sets them): `bank: train` (the
chosen k votes over train alone), `vote_pool: 200` (the vote weights are a softmax over the nearest
200, its largest k, and a smaller k sums its share of them: rows no longer sum to 1) and
`select_by: top1` (k chosen by top-1 accuracy on validation, the reference's metric).
"""

from __future__ import annotations

from typing import List, Literal, Optional, Tuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt

from raddist.protocols.base import CLASSIFICATION, FrozenInputs, Prediction
from raddist.protocols.features import FeatureSet, features_and_targets, named_features
from raddist.protocols.registry import register_protocol
from raddist.protocols.selection import macro_auroc, scored, select_best, train_plus_val, train_val_split


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ks: List[PositiveInt] = Field(default=[10, 20, 100, 200], min_length=1)  # clipped to the bank size
    temperature: PositiveFloat = 0.07
    features: FeatureSet = "cls_last"
    chunk_size: PositiveInt = 1024  # queries per similarity block; changes memory, not results
    # the neighbour bank that scores test: train+val (raddist) or train alone (the reference)
    bank: Literal["train+val", "train"] = "train+val"
    # softmax the vote weights over this many nearest (the reference: its largest k); None: over the k
    vote_pool: Optional[PositiveInt] = None
    # k chosen on validation by macro AUROC (raddist) or top-1 accuracy of the argmax (the reference)
    select_by: Literal["auroc", "top1"] = "auroc"


def clip_ks(ks: List[int], bank_size: int) -> List[int]:
    """The distinct k values a bank of this size allows, smallest first (ties go to the smaller k)."""
    return sorted({min(k, bank_size) for k in ks})


def vote(sims: np.ndarray, idx: np.ndarray, bank_targets: np.ndarray, k: int, temperature: float,
         pool: Optional[int] = None) -> np.ndarray:
    """Class scores from the k nearest of precomputed (sorted) neighbours, the weights normalised
    over the nearest `pool` (at least k; None: k)."""
    from raddist.protocols.neighbours import neighbour_sum

    pool = k if pool is None else min(max(pool, k), sims.shape[1])
    s = sims[:, :pool].astype(np.float64)
    weights = np.exp((s - s[:, :1]) / temperature)  # shifting by the nearest keeps the ratios, avoids overflow
    return neighbour_sum(idx[:, :k], weights[:, :k], bank_targets) / weights.sum(axis=1, keepdims=True)


def _depth(k: int, params: Params, bank_size: int) -> int:
    """How many neighbours to search: the k voters and the vote pool, within the bank."""
    return max(k, min(params.vote_pool or 0, bank_size))


def top1_accuracy(targets: np.ndarray, scores: np.ndarray, mass: np.ndarray) -> float:
    """Share of rows whose highest-voted class is a true one, as the reference's argmax over one-hot
    votes; a binary column's vote for 0 is the rest of the k voters' mass (1 when the pool is k)."""
    if scores.shape[1] == 1:
        return float(np.mean((scores[:, 0] > mass[:, 0] - scores[:, 0]) == (targets[:, 0] > 0.5)))
    return float(np.mean(targets[np.arange(len(scores)), scores.argmax(1)] > 0))


def select_k(
    bank_x: np.ndarray, bank_targets: np.ndarray, val_x: np.ndarray, val_targets: np.ndarray, params: Params
) -> Tuple[int, float]:
    """(best k, its validation score): one neighbour search at the largest k serves every k."""
    from raddist.protocols.neighbours import topk_cosine

    ks = clip_ks(params.ks, len(bank_x))
    sims, idx = topk_cosine(val_x, bank_x, _depth(ks[-1], params, len(bank_x)), params.chunk_size)

    def score(k):
        scores = vote(sims, idx, bank_targets, k, params.temperature, params.vote_pool)
        if params.select_by == "auroc":
            return macro_auroc(val_targets, scores)
        mass = vote(sims, idx, np.ones((len(bank_x), 1)), k, params.temperature, params.vote_pool)
        return top1_accuracy(val_targets, scores, mass)

    k, best, _ = select_best(ks, score)
    return k, best


def predict(bank_x: np.ndarray, bank_targets: np.ndarray, query_x: np.ndarray, k: int, params: Params) -> np.ndarray:
    from raddist.protocols.neighbours import topk_cosine

    k = min(k, len(bank_x))
    sims, idx = topk_cosine(query_x, bank_x, _depth(k, params, len(bank_x)), params.chunk_size)
    return vote(sims, idx, bank_targets, k, params.temperature, params.vote_pool)


@register_protocol("knn", task_types=CLASSIFICATION, params=Params)
def run(inputs: FrozenInputs, params: Params, seed: int) -> Prediction:
    train, val = train_val_split(inputs, seed)

    def xy(split):
        return features_and_targets(inputs, split, params.features)

    k, val_score = select_k(*xy(train), *xy(val), params)
    # Selection is done: the chosen k now votes over train+val (or train alone), and test is scored once.
    bank_x, bank_targets = xy(train_plus_val(train, val) if params.bank == "train+val" else train)
    selected = {"k": k, "temperature": params.temperature, "features": params.features, "bank": len(bank_x),
                **({"vote_pool": params.vote_pool, "select_by": params.select_by} if params.vote_pool else {})}
    return scored(inputs.splits, lambda split: predict(bank_x, bank_targets, named_features(inputs, split, params.features),
                                                       k, params), selected, val_score)
