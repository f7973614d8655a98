"""The Ray Train loop's own rules: checkpoint ranking, augmentation streams; the tests' crash hook.
(The loop running on workers, with resume, is tested through fit: test_fit.py.)"""

import itertools
import math

import pytest

from raddist.protocols.trainable.loop import augmentation_seed, selection_key
from tests.protocols.trainable import CrashAt


def test_checkpoints_rank_by_val_auroc_then_the_earlier_epoch_and_nan_last():
    assert selection_key(0.80, 5) > selection_key(0.79, 0)
    assert selection_key(0.80, 2) > selection_key(0.80, 3)  # a tie goes to the earlier epoch
    assert selection_key(math.nan, 0) < selection_key(0.0, 99)
    assert selection_key(0.8, 10) == pytest.approx(0.8, abs=1e-7)


def test_every_seed_epoch_and_rank_draws_its_own_augmentation_stream():
    grid = list(itertools.product(range(4), range(200), range(16)))
    seeds = {augmentation_seed(s, e, r) for s, e, r in grid}
    assert len(seeds) == len(grid)


def test_the_crash_hook_fires_once_per_marker(tmp_path, monkeypatch):
    exits = []
    monkeypatch.setattr("os._exit", exits.append)
    monkeypatch.setattr("ray.train.get_all_reported_checkpoints", lambda: [], raising=False)
    marker = str(tmp_path / "crashed")
    crash = CrashAt(1, marker)
    crash(0)
    assert exits == []
    crash(1)
    crash(1)  # the restarted worker finds the marker and goes on
    assert exits == [1]
