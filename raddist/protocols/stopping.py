"""How a trained head stops, and the one driver that trains a grid of heads to it (linear probes,
few-shot linear probes, segmentation heads, attention MIL).

A fixed, short budget favours backbones whose heads converge fast, and so biases every comparison;
training each head until its validation score stops improving does not.

Stopping: the fields every trained head's Params carries (its cap, patience, ...), one model.
Plateau: the rule, per head, on its validation score.
train_grid: the loop. A protocol supplies a HeadGrid (how its heads train one epoch, score on
validation, keep and restore their best weights); train_grid runs the epochs, asks for scores every
`eval_every` epochs, feeds them to Plateau, keeps each head's best weights, stops each head when
Plateau says so, and restores the best weights at the end. ModuleGrid is the HeadGrid of heads that
are torch modules with an optimizer each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, List, Literal, Optional, Protocol, Sequence, Tuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt


class Stopping(BaseModel):
    """The stopping parameters of a trained head; each protocol's Params extends it (and may change
    a default, e.g. min_delta in its own score's units)."""

    model_config = ConfigDict(extra="forbid")

    epochs: PositiveInt = 200  # the cap; a head stops earlier once its validation score plateaus
    patience: PositiveInt = 10  # epochs without an improvement > min_delta before a head stops
    min_delta: float = Field(default=1e-4, ge=0)  # in the validation score's units
    eval_every: PositiveInt = 1  # epochs between validation checks
    stopping: Literal["plateau", "fixed"] = "plateau"  # fixed: exactly `epochs`, cosine to zero
    lr_drops: NonNegativeInt = 0  # plateaus on which the learning rate falls before one stops the head
    lr_factor: float = Field(default=0.1, gt=0, lt=1)  # what a plateau multiplies the learning rate by

    def cap(self, schedule: Optional["Schedule"] = None) -> int:
        """The epochs a pass may last: the schedule's where given (a refit's), else the cap."""
        return self.epochs if schedule is None else int(schedule.epochs)

    def rule(self) -> str:
        """The stopping rule in words, for a cell's record and the report."""
        if self.stopping == "fixed":
            return f"fixed {self.epochs} epochs, cosine to zero"
        drops = (f"learning rate x{self.lr_factor:g} on each of the first {self.lr_drops} plateaus, then stop"
                 if self.lr_drops else "constant learning rate, stop on the first plateau")
        # the cap is recorded on its own (max_epochs)
        return (f"validation plateau: patience {self.patience} epochs (checked every {self.eval_every}), "
                f"min_delta {self.min_delta:g}, {drops}")


@dataclass(frozen=True)
class Schedule:
    """A pass of known length, without validation (a refit): `epochs` epochs, the learning rate x
    lr_factor after each epoch in lr_drops."""

    epochs: int
    lr_drops: Tuple[int, ...] = ()

    @classmethod
    def replay(cls, record: "Record", head: int) -> "Schedule":
        """What head saw up to its best epoch: a refit on more data replays it."""
        best = int(record.best_epoch[head])
        return cls(best, tuple(e for e in record.lr_drops[head] if e < best))


class Plateau:
    """Early stopping for a grid of heads, each on its own validation score (higher is better).

    update(epoch, scores) at each check. The weights a head keeps are those of its best score so far,
    the LATER epoch on a tie (no evidence for either: the one trained longer). Its patience restarts
    only when the score beats the last such mark by more than min_delta (any finite score beats
    none); a head whose mark is `patience` epochs old has plateaued: while it has learning-rate drops
    left it spends one (`dropped` says which heads did at this check; the caller lowers their rates)
    and its patience restarts, against the same mark; with none left it stops. So a head stops only
    once the last drop has plateaued too: torch's ReduceLROnPlateau(mode="max", threshold=min_delta,
    threshold_mode="abs", cooldown=0) with patience in epochs, and a stop after the last reduction.
    A head with no finite score yet never plateaus here (the cap ends it).
    """

    def __init__(self, n_heads: int, patience: int, min_delta: float, drops: int = 0):
        self.patience, self.min_delta = patience, min_delta
        self.drops_left = np.full(n_heads, drops, np.int64)
        self.dropped = np.zeros(n_heads, bool)
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
        self.dropped = stale & (self.drops_left > 0)
        self.drops_left[self.dropped] -= 1
        self.mark_epoch[self.dropped] = epoch
        stale &= ~self.dropped
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


class HeadGrid(Protocol):
    """What train_grid asks of a protocol's heads; `heads` arguments are index arrays."""

    n_heads: int

    def train_epoch(self, active: np.ndarray) -> None:
        """One epoch for the heads where active (bool per head); the others do not change."""

    def scores(self, active: np.ndarray) -> np.ndarray:
        """Each head's validation score (higher is better); NaN where not active, or undefined."""

    def keep(self, heads: np.ndarray) -> None:
        """Copy these heads' current weights aside."""

    def restore(self, heads: np.ndarray) -> None:
        """Load the copies kept of these heads."""

    def scale_lr(self, heads: np.ndarray, factor: float) -> None:
        """Multiply these heads' learning rates by factor."""


@dataclass
class Record:
    """How each head of a grid trained: epochs_run (epochs before it stopped), best_epoch (whose
    weights it holds), stopped ('plateau' | 'cap' | 'fixed'), best_score (its validation score at
    best_epoch; NaN where it had none, or was not validated), lr_drops (the epochs after which its
    learning rate fell)."""

    epochs_run: np.ndarray
    best_epoch: np.ndarray
    stopped: List[str]
    best_score: np.ndarray
    lr_drops: List[List[int]]


def train_grid(grid: HeadGrid, stop: Stopping, validate: bool, schedule: Optional[Schedule] = None) -> Record:
    """Train every head of grid: with validate (and stop.stopping='plateau'), each until Plateau stops
    it or the cap, its learning rate x stop.lr_factor on each of its first stop.lr_drops plateaus,
    ending at its best check's weights. Else the schedule (default: stop.epochs at a constant rate),
    the last weights (the grid applies the cosine schedule of stopping='fixed' itself)."""
    cap, n = stop.cap(schedule), grid.n_heads
    lr_drops = schedule.lr_drops if schedule is not None else ()
    plateau = (Plateau(n, stop.patience, stop.min_delta, stop.lr_drops)
               if validate and stop.stopping == "plateau" else None)
    drops: List[List[int]] = [[] for _ in range(n)]
    epoch = 0
    while epoch < cap and not (plateau is not None and plateau.done()):
        grid.train_epoch(np.ones(n, bool) if plateau is None else plateau.active.copy())
        epoch += 1
        if plateau is None and epoch in lr_drops:
            _drop(grid, np.arange(n), stop.lr_factor, epoch, drops)
        if plateau is not None and (epoch % stop.eval_every == 0 or epoch == cap):
            grid.keep(np.flatnonzero(plateau.update(epoch, grid.scores(plateau.active.copy()))))
            _drop(grid, np.flatnonzero(plateau.dropped), stop.lr_factor, epoch, drops)
    if plateau is None:
        stopped = "fixed" if stop.stopping == "fixed" else "cap"
        return Record(np.full(n, epoch), np.full(n, epoch), [stopped] * n, np.full(n, np.nan), drops)
    grid.restore(np.flatnonzero(plateau.best_epoch > 0))  # the others never scored: their last weights
    trained, best_epoch, stopped = plateau.summary(epoch)
    return Record(trained, best_epoch, stopped, np.where(np.isfinite(plateau.best), plateau.best, np.nan),
                  drops)


def _drop(grid: HeadGrid, heads: np.ndarray, factor: float, epoch: int, drops: List[List[int]]) -> None:
    if len(heads):
        grid.scale_lr(heads, factor)
        for k in heads:
            drops[k].append(epoch)


class ModuleGrid:
    """A HeadGrid of torch modules, one optimizer each, all stepping on the same mini-batches.

    batches(): one epoch's batches; loss(model, batch) -> scalar tensor; score(model) -> float;
    schedulers: stepped after every batch (stopping='fixed': the cosine over the whole pass).
    """

    def __init__(self, models: Sequence, optimizers: Sequence, batches: Callable[[], Iterable],
                 loss: Callable, score: Optional[Callable] = None, schedulers: Sequence = ()):
        self.models, self.optimizers, self.schedulers = list(models), list(optimizers), list(schedulers)
        self.batches, self.loss, self.score = batches, loss, score
        self.n_heads = len(self.models)
        self.kept: List[Optional[dict]] = [None] * self.n_heads

    def train_epoch(self, active: np.ndarray) -> None:
        running = np.flatnonzero(active)
        for batch in self.batches():
            for k in running:
                loss = self.loss(self.models[k], batch)
                self.optimizers[k].zero_grad(set_to_none=True)
                loss.backward()
                self.optimizers[k].step()
            for sched in self.schedulers:
                sched.step()

    def scores(self, active: np.ndarray) -> np.ndarray:
        return np.array([self.score(m) if on else np.nan for m, on in zip(self.models, active)], np.float64)

    def keep(self, heads: np.ndarray) -> None:
        for k in heads:
            self.kept[k] = {name: t.detach().clone() for name, t in self.models[k].state_dict().items()}

    def restore(self, heads: np.ndarray) -> None:
        for k in heads:
            self.models[k].load_state_dict(self.kept[k])

    def scale_lr(self, heads: np.ndarray, factor: float) -> None:
        for k in heads:
            for group in self.optimizers[k].param_groups:
                group["lr"] *= factor
