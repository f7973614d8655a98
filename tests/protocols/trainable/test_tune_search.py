"""A search: block end to end: a 4-trial seeded search (Optuna's TPE, or Tune's random search where
optuna is not installed) with ASHA, over Ray Train fits of a tiny ViT on 2 CPUs.

Selection is on validation only: the trials never get the test split, and the search restored with
the test labels flipped chooses the same trial and scores test with the very same probabilities.
(A test that killed the driver mid-search and resumed it raced Tune's and Train's state on disk on a
loaded 2-core machine, and was taken out; resuming is Tuner.restore, search.search_space.)"""

import os

import numpy as np
import pyarrow as pa
import pytest

from raddist.cluster import TRAIN_START_TIMEOUT_ENV
from raddist.metrics import score_prediction
from tests.protocols.trainable import write_halves
from tests.protocols.trainable.search_driver import ALGORITHM, run


@pytest.fixture(scope="module")
def halves(ray_local, tmp_path_factory):
    # a loaded 2-core machine may take over Train's 60 s to start a trial's worker (as a sweep does,
    # raddist.cluster; Tune copies it from the driver into each trial)
    os.environ.setdefault(TRAIN_START_TIMEOUT_ENV, "600")
    return write_halves(str(tmp_path_factory.mktemp("halves")), n_patients=16)


def poisoned(table: pa.Table) -> pa.Table:
    """The test split's labels flipped: a selection that looked at test would prefer the worst trial."""
    test = np.asarray(table["split"].to_pylist()) == "test"
    top = np.asarray(table["top"].to_pylist())
    return table.set_column(table.column_names.index("top"), "top", pa.array(np.where(test, 1 - top, top)))


def auroc(prediction) -> float:
    rows = score_prediction("binary", prediction, ["top"], n_boot=10, seed=0)
    return next(r["value"] for r in rows if r["metric"] == "auroc")


def test_a_seeded_search_with_asha_selects_on_validation_only(halves, tmp_path):
    checkpoint_dir = str(tmp_path / "cell")
    clean = run(halves, checkpoint_dir)
    search = clean.selected["search"]
    trials = search["by_trial"]
    assert (search["algorithm"], search["scheduler"], search["num_samples"], search["seed"]) == (ALGORITHM, "asha", 4, 7)
    assert search["trials"] == 4 and len(trials) == 4
    assert search["stopped_by_asha"] == sum(t["epochs_run"] < 2 for t in trials)
    assert all(t["epochs_run"] in (1, 2) and 3e-4 <= t["config"]["lr"] <= 3e-2 and t["config"]["r"] in (2, 4)
               for t in trials)
    # the winner: the best validation score of any trial, its configuration recorded
    best_val = max(t["best_val_auroc"] for t in trials)
    assert clean.val_score == best_val and search["winner"] in [t["config"] for t in trials]
    assert clean.selected["lr"] == search["winner"]["lr"]

    # The trials see train and val only (protocol.run hands them no test split). The same search
    # again with the test labels flipped: Tune restores it (no trial trains again), the same
    # trial wins, its checkpoint scores test with the same probabilities, and the AUROC flips.
    fits = sorted(os.listdir(checkpoint_dir))
    flipped = run(poisoned(halves), checkpoint_dir)
    assert sorted(os.listdir(checkpoint_dir)) == fits
    assert flipped.selected["search"]["winner"] == search["winner"]
    assert flipped.selected["checkpoint"] == clean.selected["checkpoint"]
    assert flipped.selected["search"]["by_trial"] == trials
    order = np.argsort(clean.sample_ids), np.argsort(flipped.sample_ids)
    np.testing.assert_allclose(clean.scores[order[0]], flipped.scores[order[1]], atol=1e-6)
    assert auroc(flipped) == pytest.approx(1 - auroc(clean), abs=1e-9)
