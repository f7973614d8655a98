"""A search: block end to end: a 4-trial seeded search (Optuna's TPE, or Tune's random search where
optuna is not installed) with ASHA, over Ray Train fits of a tiny ViT on 2 CPUs.

Selection is on validation only: the trials never get the test split, and the search restored with
the test labels flipped chooses the same trial and scores test with the very same probabilities.
The search runs once, the way an interrupted sweep runs it: a driver process joins this module's Ray
cluster, starts the search, and is killed (SIGKILL) once Tune's experiment state on disk holds a
finished trial and another trial's fit has registered a checkpoint; the
same cell run again restores the experiment (Tuner.restore). Finished trials are not trained again,
the searcher's state is restored (the configurations are the seeded sequence an uninterrupted search
proposes), and 4 trials train in all."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from raddist import protocols
from raddist.cluster import TRAIN_START_TIMEOUT_ENV
from raddist.metrics import score_prediction
from raddist.protocols.trainable import space
from raddist.protocols.trainable.search import SEARCH_EXPERIMENT, TRIAL_RUN
from tests.protocols.trainable import write_halves
from tests.protocols.trainable.search_driver import ALGORITHM, SEARCH, run
@pytest.fixture(scope="module")
def halves(ray_local, tmp_path_factory):
    # a loaded 2-core machine may take over Train's 60 s to start a trial's worker (as a sweep does,
    # raddist.cluster; Tune copies it from the driver into each trial)
    os.environ.setdefault(TRAIN_START_TIMEOUT_ENV, "600")
    # Tune as a sweep runs it (raddist.trials): no per-trial result.json or params.json. So set here, the
    # same whichever tests ran before in this process (a sweep's sets it for the rest of the process)
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    return write_halves(str(tmp_path_factory.mktemp("halves")), n_patients=16)


def poisoned(table: pa.Table) -> pa.Table:
    """The test split's labels flipped: a selection that looked at test would prefer the worst trial."""
    test = np.asarray(table["split"].to_pylist()) == "test"
    top = np.asarray(table["top"].to_pylist())
    return table.set_column(table.column_names.index("top"), "top", pa.array(np.where(test, 1 - top, top)))


def auroc(prediction) -> float:
    rows = score_prediction("binary", prediction, ["top"], n_boot=10, seed=0)
    return next(r["value"] for r in rows if r["metric"] == "auroc")


def trials_on_disk(checkpoint_dir) -> dict:
    """Tune's experiment state as a restore reads it: trial id -> (status, config) ({} before Tune wrote
    one). A sweep runs Tune without its per-trial loggers (raddist.trials): no result.json to read."""
    states = sorted(glob.glob(os.path.join(checkpoint_dir, SEARCH_EXPERIMENT, "experiment_state-*.json")))
    try:
        data = json.load(open(states[-1])) if states else {"trial_data": []}
    except ValueError:  # caught mid-write
        return {}
    return {t["trial_id"]: (t["status"], t["config"]) for t in (json.loads(d[0]) for d in data["trial_data"])}


def finished(checkpoint_dir) -> list:
    return [t for t, (status, _) in trials_on_disk(checkpoint_dir).items() if status == "TERMINATED"]


def results_of(checkpoint_dir, trial_id: str) -> dict:
    """What a trial's fit left: its Train run's files and when each was written (training again rewrites them)."""
    run_dir = os.path.join(checkpoint_dir, TRIAL_RUN + trial_id)
    return {os.path.relpath(os.path.join(d, f), run_dir): os.stat(os.path.join(d, f)).st_mtime_ns
            for d, _, fs in os.walk(run_dir) for f in fs}


def latest_checkpoint(run_dir: str) -> dict:
    """The metrics of a Train run's latest registered checkpoint (its controller's snapshot, what a rerun
    resumes from; a checkpoint directory alone may not be registered yet), {} before the first."""
    try:
        snapshot = json.load(open(os.path.join(run_dir, "checkpoint_manager_snapshot.json")))
        return (snapshot.get("latest_checkpoint_result") or {}).get("metrics") or {}
    except (OSError, ValueError):
        return {}


def mid_fit(checkpoint_dir) -> list:
    """The trials caught mid-fit: not finished in the experiment state on disk, their fit has a
    registered checkpoint (empty until the state on disk holds a finished trial)."""
    done = finished(checkpoint_dir)
    if not done:
        return []
    runs = [r for r in glob.glob(os.path.join(checkpoint_dir, TRIAL_RUN + "*")) if latest_checkpoint(r)]
    return [t for t in (os.path.basename(r)[len(TRIAL_RUN):] for r in runs) if t not in done]


def kill_driver_mid_search(manifest: str, checkpoint_dir: str, address: str, timeout: float = 900) -> tuple:
    """Start the search in a driver process on the cluster at address and SIGKILL it once the experiment
    state on disk has a finished trial and another trial's fit has registered a checkpoint; the cluster
    ends the dead driver's trials and fits, as it ends a killed sweep's. (the finished trials' Train run
    files as the kill left them, the trials killed mid-fit with their latest checkpoint's metrics)."""
    log = open(checkpoint_dir + ".log", "w")  # a file, not a pipe: a pipe nobody reads fills and blocks the driver
    proc = subprocess.Popen([sys.executable, "-m", "tests.protocols.trainable.search_driver", manifest, checkpoint_dir,
                             address], start_new_session=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__)))),
                            stdout=log, stderr=subprocess.STDOUT)
    start = time.monotonic()
    try:
        while not mid_fit(checkpoint_dir):
            assert proc.poll() is None, open(checkpoint_dir + ".log").read()[-3000:]
            assert time.monotonic() - start < timeout, "no trial finished, or none started after"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()
    # the cluster ends the dead driver's trials and fits (a fit may register one more epoch meanwhile):
    # wait for their CPUs to come back, then take what the kill left
    settled = time.monotonic() + 120
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"] and time.monotonic() < settled:
        time.sleep(0.5)
    done = finished(checkpoint_dir)
    assert 1 <= len(done) < SEARCH["num_samples"], trials_on_disk(checkpoint_dir)
    interrupted = {t: latest_checkpoint(os.path.join(checkpoint_dir, TRIAL_RUN + t)) for t in mid_fit(checkpoint_dir)}
    return {t: results_of(checkpoint_dir, t) for t in done}, interrupted


@pytest.fixture(scope="module")
def resumed(ray_local, halves, tmp_path_factory):
    """The search killed mid-way and run again: (the cell's prediction, its checkpoint dir, the trials
    that had finished at the kill with what they had left, the trials killed mid-fit)."""
    root = tmp_path_factory.mktemp("resumed")
    pq.write_table(halves, root / "halves.parquet")
    checkpoint_dir = str(root / "cell")
    finished, interrupted = kill_driver_mid_search(str(root / "halves.parquet"), checkpoint_dir,
                                                   ray_local.get_runtime_context().gcs_address)
    return run(halves, checkpoint_dir), checkpoint_dir, finished, interrupted


def test_a_search_killed_mid_way_resumes_without_training_a_finished_trial_again(resumed):
    prediction, checkpoint_dir, done, interrupted = resumed
    search = prediction.selected["search"]
    # the finished trials kept what they had: not one of them trained again
    assert {t: results_of(checkpoint_dir, t) for t in done} == done and all(done.values())
    # num_samples trials in all: 4 Tune trials, 4 Train runs, each finished
    states = trials_on_disk(checkpoint_dir)
    assert sorted(status for status, _ in states.values()) == ["TERMINATED"] * 4 and search["trials"] == 4
    assert sorted(d for d in os.listdir(checkpoint_dir) if d.startswith(TRIAL_RUN)) == \
        sorted(TRIAL_RUN + t for t in states)
    # a trial killed mid-fit resumed its fit from its checkpoint: no epoch it had checkpointed trained
    # again (its last one trained after the restore, from the next epoch on, unless it had trained them
    # all), and the record counts both epochs
    assert interrupted  # the kill came after its first epoch's checkpoint
    for trial_id, at_kill in interrupted.items():
        last = latest_checkpoint(os.path.join(checkpoint_dir, TRIAL_RUN + trial_id))
        if at_kill["epoch"] == 1:  # it had trained both epochs as the cluster ended it: nothing trained again
            assert last == at_kill
        else:
            assert (last["epoch"], last["start_epoch"]) == (1, at_kill["epoch"] + 1)
        config = states[trial_id][1]
        assert [(t["epochs_run"], t["stopped_early"]) for t in search["by_trial"] if t["config"] == config] == \
            [(2, False)]
    # the searcher's state was restored: the seeded sequence an uninterrupted search proposes (a fresh
    # searcher would have proposed the first configuration again), in the order the trials were created
    params = protocols.get("lora").parse({"epochs": 2, "batch_size": 8, "search": SEARCH})
    assert [t["config"] for t in search["by_trial"]] == space.configurations(params.search, SEARCH["seed"])


def test_a_seeded_search_with_asha_selects_on_validation_only(halves, resumed):
    clean, checkpoint_dir, _, _ = resumed
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
