"""When a trained head stops: on a validation plateau, with a cap, the rule every trained head shares
(linear probes, few-shot linear probes, segmentation heads, attention MIL).

A fixed, short budget favours backbones whose heads converge fast, and so biases every comparison;
training each head until its validation score stops improving does not.
"""

from __future__ import annotations

from typing import List, Tuple

import numpy as np


class Plateau:
    """Early stopping for a grid of heads, each on its own validation score (higher is better).

    update(epoch, scores) at each check. The weights a head keeps are those of its best score so far,
    the LATER epoch on a tie (no evidence for either: the one trained longer). Its patience restarts
    only when the score beats the last such mark by more than min_delta (any finite score beats
    none); a head whose mark is `patience` epochs old stops. A head with no finite score yet never
    stops here (the cap ends it).
    """

    def __init__(self, n_heads: int, patience: int, min_delta: float):
        self.patience, self.min_delta = patience, min_delta
        self.best = np.full(n_heads, -np.inf)
        self.best_epoch = np.zeros(n_heads, np.int64)  # whose weights are kept; 0: no finite score yet
        self.mark = np.full(n_heads, -np.inf)  # the score of the last improvement by more than min_delta
        self.mark_epoch = np.zeros(n_heads, np.int64)
        self.active = np.ones(n_heads, bool)
        self.stopped_at = np.zeros(n_heads, np.int64)  # the epoch a head stopped on a plateau, 0 if it did not

    def update(self, epoch: int, scores) -> np.ndarray:
        """Record the scores of a check after `epoch` epochs; returns which heads keep these weights."""
        scores = np.asarray(scores, np.float64)
        finite = self.active & np.isfinite(scores)
        keep = finite & (scores >= self.best)
        self.best[keep], self.best_epoch[keep] = scores[keep], epoch
        improved = finite & (scores > self.mark + self.min_delta)
        self.mark[improved], self.mark_epoch[improved] = scores[improved], epoch
        stale = self.active & (self.mark_epoch > 0) & (epoch - self.mark_epoch >= self.patience)
        self.active &= ~stale
        self.stopped_at[stale] = epoch
        return keep

    def done(self) -> bool:
        return not self.active.any()

    def summary(self, epochs_run: int) -> Tuple[np.ndarray, np.ndarray, List[str]]:
        """(epochs each head trained, the epoch whose weights it keeps, 'plateau' | 'cap'), after a
        pass of epochs_run epochs; a head with no finite score keeps its last epoch."""
        plateau = self.stopped_at > 0
        trained = np.where(plateau, self.stopped_at, epochs_run)
        best = np.where(self.best_epoch > 0, self.best_epoch, trained)
        return trained, best, ["plateau" if p else "cap" for p in plateau]
