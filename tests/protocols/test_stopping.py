"""The stopping rule every trained head shares: the best weights kept, a plateau of `patience` checks."""

import numpy as np

from raddist.protocols.stopping import Plateau


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
