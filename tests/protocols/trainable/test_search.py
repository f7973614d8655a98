"""The learning-rate search's placement: what each fit's workers take, and how many fits run at once.
(The search itself runs in the trainable protocols' end-to-end tests: test_protocol.py.)"""

import pytest

from raddist.protocols.trainable.fit import placement
from raddist.protocols.trainable.search import TRIAL_CPUS, concurrent_fits


@pytest.mark.parametrize("workers, share, fits", [(1, 0.75, 1), (2, 0.5, 1)])
def test_workers_leave_room_for_decoding_and_fits_never_oversubscribe(ray_local, workers, share, fits):
    """2 CPUs, a cell holding 0.5: each worker takes (2 - 0.5) / (workers + 1), one fit at a time."""
    where = placement(workers, use_gpu=False, cell_cpus=0.5)
    assert where.worker == {"CPU": share} and where.threads == 1
    assert concurrent_fits(workers, use_gpu=False, cell_cpus=0.5) == fits
    assert fits * (workers * share + TRIAL_CPUS) <= 2 - 0.5


def test_a_gpu_fit_asks_one_gpu_per_worker(ray_local):
    assert placement(2, use_gpu=True, cell_cpus=0.5).worker["GPU"] == 1.0
    assert concurrent_fits(1, use_gpu=True, cell_cpus=0.5) == 1  # none here: at least one, queued


@pytest.mark.parametrize("epochs, rungs", [(2, [1, 2]), (3, [1, 2])])
def test_asha_stops_trials_early_but_never_one_that_trains_every_epoch(epochs, rungs):
    """ASHA kills a trial that reaches max_t (its fit's resources then wait for Train's cleaner): max_t is
    one past the last epoch, so a trial that trains every epoch returns by itself; the rungs are as before."""
    from raddist.protocols.trainable.search import asha_scheduler
    from raddist.protocols.trainable.space import SearchSpec

    search = SearchSpec(space={"lr": {"loguniform": [1e-4, 1e-2]}}, scheduler="asha", num_samples=4)
    asha = asha_scheduler(search, epochs)
    assert asha._max_t == epochs + 1
    assert sorted(m for m, _ in asha._brackets[0]._rungs if m <= epochs) == rungs
    assert asha_scheduler(search.model_copy(update={"scheduler": "none"}), epochs) is None
