"""The stopping rule every trained head shares: the best weights kept, a plateau of `patience` checks."""

import numpy as np

from raddist.protocols.stopping import Plateau, Schedule, Stopping, train_grid


def test_plateau_keeps_the_best_and_stops_after_patience():
    stop = Plateau(3, patience=2, min_delta=0.01)
    assert list(stop.update(1, [0.5, np.nan, 0.7])) == [True, False, True]
    # +0.005 is kept (the best so far) but is no improvement by more than min_delta: patience runs on
    assert list(stop.update(2, [0.505, np.nan, 0.8])) == [True, False, True]
    assert list(stop.update(3, [0.5, np.nan, 0.8])) == [False, False, True]  # a tie: the later epoch
    assert list(stop.active) == [False, True, True] and stop.stopped_at[0] == 3  # no rise > 0.01 since epoch 1
    stop.update(4, [0.9, 0.6, 0.8])  # a stopped head no longer counts
    assert list(stop.active) == [False, True, False] and stop.best[0] == 0.505
    trained, best, stopped = stop.summary(4)
    assert list(trained) == [3, 4, 4] and list(best) == [2, 4, 4] and stopped == ["plateau", "cap", "plateau"]
    never = Plateau(1, patience=1, min_delta=0.0)
    for epoch in range(1, 6):
        never.update(epoch, [np.nan])  # no defined score: trains to the cap, keeps its last epoch
    assert never.active[0] and never.summary(5)[1][0] == 5


class ScriptedGrid:
    """A HeadGrid whose validation scores are scripted per epoch; it records what the driver asks."""

    def __init__(self, scores_by_epoch):
        self.script, self.n_heads = np.asarray(scores_by_epoch, np.float64), len(scores_by_epoch[0])
        self.epoch, self.trained, self.kept, self.restored, self.scaled = 0, [], {}, None, []

    def train_epoch(self, active):
        self.trained.append(active.copy())
        self.epoch += 1

    def scores(self, active):
        return np.where(active, self.script[self.epoch - 1], np.nan)

    def keep(self, heads):
        self.kept.update({int(k): self.epoch for k in heads})

    def restore(self, heads):
        self.restored = {int(k): self.kept[int(k)] for k in heads}

    def scale_lr(self, heads, factor):
        self.scaled.append((self.epoch, [int(k) for k in heads], factor))


def test_the_driver_stops_each_head_on_its_plateau_and_restores_its_best_check():
    script = [[0.5, 0.1], [0.6, 0.2], [0.6, 0.3], [0.59, 0.4], [0.58, 0.5], [0.5, 0.6], [0.5, 0.7], [0.5, 0.8]]
    grid = ScriptedGrid(script)
    record = train_grid(grid, Stopping(epochs=8, patience=2, min_delta=0.01, lr_drops=0), validate=True)
    # head 0 rose last at epoch 2 (0.6; 0.6 at 3 is a tie, kept, no rise): it stops at 4 and holds epoch 3
    assert list(record.epochs_run) == [4, 8] and list(record.best_epoch) == [3, 8]
    assert record.stopped == ["plateau", "cap"] and list(record.best_score) == [0.6, 0.8]
    assert [list(a) for a in grid.trained[3:5]] == [[True, True], [False, True]]  # head 0 no longer trains
    assert grid.restored == {0: 3, 1: 8}
    checked = ScriptedGrid(script)  # checked every 3 epochs, and at the cap
    record = train_grid(checked, Stopping(epochs=8, patience=2, min_delta=0.01, eval_every=3, lr_drops=0), validate=True)
    assert list(record.best_epoch) == [3, 8] and list(record.epochs_run) == [6, 8]
    fixed = ScriptedGrid(script)  # no validation: exactly the epochs asked for, nothing kept
    record = train_grid(fixed, Stopping(epochs=8), validate=False, schedule=Schedule(5))
    assert list(record.epochs_run) == list(record.best_epoch) == [5, 5] and fixed.restored is None
    assert record.stopped == ["cap", "cap"] and train_grid(ScriptedGrid(script), Stopping(
        stopping="fixed", epochs=3), validate=True).stopped == ["fixed", "fixed"]


def test_a_plateau_lowers_the_learning_rate_and_only_the_last_drop_stops_the_head():
    stop = Plateau(1, patience=2, min_delta=0.01, drops=1)
    for epoch, score in enumerate([0.5, 0.5, 0.505], start=1):
        stop.update(epoch, [score])
    assert stop.dropped[0] and stop.active[0] and stop.drops_left[0] == 0  # a plateau, a drop left: spend it
    stop.update(4, [0.6])  # the lower rate finds a rise: patience restarts from it
    stop.update(5, [0.6])
    assert not stop.dropped[0] and stop.active[0]
    stop.update(6, [0.605])  # plateaued again, no drop left: stop
    assert not stop.active[0] and stop.stopped_at[0] == 6 and stop.best_epoch[0] == 6


def test_the_driver_lowers_each_heads_rate_on_its_plateaus_and_a_refit_replays_them():
    script = [[0.5, 0.1], [0.5, 0.2], [0.5, 0.3], [0.5, 0.4], [0.5, 0.5], [0.6, 0.5], [0.6, 0.5], [0.6, 0.5]]
    grid = ScriptedGrid(script)
    record = train_grid(grid, Stopping(epochs=8, patience=2, min_delta=0.01, lr_drops=2, lr_factor=0.5), validate=True)
    # head 0: plateaus at 3 (drop), 5 (drop), rises at 6, plateaus at 8 with no drop left (stops); head 1
    # rises to 5, plateaus at 7 (drop), reaches the cap
    assert grid.scaled == [(3, [0], 0.5), (5, [0], 0.5), (7, [1], 0.5)]
    assert record.lr_drops == [[3, 5], [7]] and record.stopped == ["plateau", "cap"]
    assert list(record.best_epoch) == [8, 8]  # ties: the later epoch
    replay = Schedule.replay(record, 0)
    assert replay == Schedule(8, (3, 5))
    refit = ScriptedGrid(script)
    assert train_grid(refit, Stopping(lr_factor=0.5), validate=False, schedule=replay).lr_drops == [[3, 5], [3, 5]]
    assert refit.scaled == [(3, [0, 1], 0.5), (5, [0, 1], 0.5)] and len(refit.trained) == 8
    assert "x0.5 on each of the first 2 plateaus" in Stopping(lr_factor=0.5, lr_drops=2).rule()
