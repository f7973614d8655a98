"""A search: block end to end: a 4-trial seeded search (Optuna's TPE, or Tune's random search where
optuna is not installed) with ASHA, over Ray Train fits of a tiny ViT on 2 CPUs.

Selection is on validation only: the trials never get the test split, and the search restored with
the test labels flipped chooses the same trial and scores test with the very same probabilities."""

import importlib.util
import os

import numpy as np
import pyarrow as pa
import pytest

from raddist import protocols
from raddist.cluster import TRAIN_START_TIMEOUT_ENV
from raddist.metrics import score_prediction
from raddist.protocols.base import TrainInputs
from tests.protocols.trainable import write_halves

ALGORITHM = "optuna" if importlib.util.find_spec("optuna") else "random"
SEARCH = {"space": {"lr": {"loguniform": [3e-4, 3e-2]}, "r": {"choice": [2, 4]}},
          "algorithm": ALGORITHM, "scheduler": "asha", "num_samples": 4, "max_concurrent": 1, "seed": 7}


# Each fit's worker takes (2 - CELL_CPUS) / 2 = 0.2 CPU. ASHA stops a trial (at a rung, and at max_t)
# by killing it, and with it the Train controller, whose worker group's placement group is then left to
# Train's PlacementGroupCleaner; that needs the state API, which a cluster without the dashboard (these
# tests) lacks, so here each fit may leave its 0.2 CPU held: 4 fits and the scorers still fit 2 CPUs.
CELL_CPUS = 1.6


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


def run(table, checkpoint_dir):
    lora = protocols.get("lora")
    params = lora.parse({"epochs": 2, "batch_size": 8, "search": SEARCH})
    inputs = TrainInputs(task_type="binary", class_names=["top"], label_columns=["top"], manifest=table,
                         backbone="tiny_vit", weights="random", contract={"size": 64},
                         checkpoint_dir=str(checkpoint_dir), num_workers=1, use_gpu=False, cell_cpus=CELL_CPUS)
    return lora.run(inputs, params, seed=0)


def auroc(prediction) -> float:
    rows = score_prediction("binary", prediction, ["top"], n_boot=10, seed=0)
    return next(r["value"] for r in rows if r["metric"] == "auroc")


def test_a_seeded_search_with_asha_selects_on_validation_only(halves, tmp_path):
    clean = run(halves, tmp_path / "clean")
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
    fits = sorted(os.listdir(tmp_path / "clean"))
    flipped = run(poisoned(halves), tmp_path / "clean")
    assert sorted(os.listdir(tmp_path / "clean")) == fits
    assert flipped.selected["search"]["winner"] == search["winner"]
    assert flipped.selected["checkpoint"] == clean.selected["checkpoint"]
    assert flipped.selected["search"]["by_trial"] == trials
    order = np.argsort(clean.sample_ids), np.argsort(flipped.sample_ids)
    np.testing.assert_allclose(clean.scores[order[0]], flipped.scores[order[1]], atol=1e-6)
    assert auroc(flipped) == pytest.approx(1 - auroc(clean), abs=1e-9)
