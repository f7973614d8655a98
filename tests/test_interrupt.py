"""Ctrl-C and SIGTERM stop a run cleanly: one line, exit 130 or 143, no traceback, no lease left,
progress.json and summary.json "interrupted", and a rerun equal to a run never interrupted."""

import contextlib
import glob
import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
import yaml


def _config(synthetic_data, tmp_path, out, cache="cache"):
    config = {
        "name": "interrupt",
        "backbones": [{"name": "tiny_cnn", "weights": "random"}, {"name": "tiny_vit", "weights": "random"}],
        "tasks": [{"name": "brain", "manifest": f"{synthetic_data}/brain_mri/manifest.parquet", "type": "multiclass",
                   "labels": ["label"], "classes": ["meningioma", "glioma", "pituitary"]}],
        "protocols": [{"name": "knn", "params": {"ks": [5]}}, {"name": "logreg", "params": {"cs": [0.1, 1.0]}}],
        "seeds": [0, 1, 2], "bootstrap": 20,
        "resources": {"progress_interval_s": 1, "max_concurrent_cells": 1},
        "storage": {"output": str(out), "cache": str(tmp_path / cache)},
    }
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _start(config, runs, log=None):
    """A `raddist run` with a local Ray of its own, in a process group of its own (runs: each such group,
    killed at the end of the test: nothing of a failed test's runs outlives it); its output piped, or
    written to log."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    to = open(log, "w") if log else subprocess.PIPE
    proc = subprocess.Popen([sys.executable, "-m", "raddist.cli", "run", str(config)], stdout=to,
                            stderr=subprocess.STDOUT if log else subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    runs.append(proc)
    return proc


def _wait_for(condition, proc, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended before the signal: {proc.stderr.read()[-2000:]}")
        time.sleep(0.2)
    proc.kill()
    pytest.fail("the run never reached the point to interrupt")


def _embedding(tmp_path):
    return lambda: bool(glob.glob(str(tmp_path / "cache" / "features" / "*" / "lease.json")))


def _progress(out):
    try:
        return json.loads((out / "progress.json").read_text())
    except (OSError, ValueError):
        return None


def _cells_running(out):
    """This run (not the last one's progress.json) has finished a cell."""
    before = (_progress(out) or {}).get("run_id")

    def running():
        state = _progress(out)
        return state is not None and state["run_id"] != before and state["cells"]["done_now"] >= 1
    return running


def _assert_stopped_cleanly(proc, out, tmp_path, code, timeout=120):
    stdout, stderr = proc.communicate(timeout=timeout)
    assert proc.returncode == code, stdout[-2000:] + stderr[-3000:]
    assert "Traceback" not in stderr + stdout and "*** SIG" not in stderr, stderr[-3000:]
    assert not glob.glob(str(tmp_path / "cache" / "*" / "*" / "lease.json"))  # every lease released
    state = json.loads((out / "progress.json").read_text())["state"]
    return stdout, stderr, state


@pytest.mark.timeout(1500)
def test_interrupts_stop_cleanly_and_the_rerun_equals_an_uninterrupted_run(synthetic_data, tmp_path):
    runs = []
    try:
        _interrupt_and_rerun(synthetic_data, tmp_path, runs)
    finally:
        for proc in runs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the group: a run's Ray too, if anything of it is left


def _interrupt_and_rerun(synthetic_data, tmp_path, runs):
    out = tmp_path / "out"
    config = _config(synthetic_data, tmp_path, out)
    # SIGINT once, mid-embedding
    proc = _start(config, runs)
    _wait_for(_embedding(tmp_path), proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr, state = _assert_stopped_cleanly(proc, out, tmp_path, 130)
    assert state == "interrupted"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["state"] == "interrupted" and summary["cells_failed"] == 0
    last = [line for line in stdout.splitlines() if line.strip()][-1]
    assert last == (f"interrupted: {summary['cells_done']}/{summary['cells_total']} cells done; "
                    "run the same command to continue")
    assert "interrupted" in (out / "report.md").read_text().lower()

    # SIGTERM (ray job stop, a pod eviction), mid-cells
    running = _cells_running(out)
    proc = _start(config, runs)
    _wait_for(running, proc)
    proc.send_signal(signal.SIGTERM)
    stdout, _, state = _assert_stopped_cleanly(proc, out, tmp_path, 143)
    assert state == "interrupted" and stdout.strip().splitlines()[-1].startswith("interrupted: ")

    # SIGINT twice: the second exits at once
    running = _cells_running(out)
    proc = _start(config, runs)
    _wait_for(running, proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    started = time.time()
    _assert_stopped_cleanly(proc, out, tmp_path, 130, timeout=30)
    assert time.time() - started < 15

    # the rerun finishes, equal to a run never interrupted, which runs beside it (not beside the
    # interrupted runs: their stops see no load of ours) with a cache of its own: it embeds afresh too
    proc = _start(config, runs)
    clean = tmp_path / "clean"
    straight_run = _start(_config(synthetic_data, tmp_path, clean, cache="clean_cache"), runs, tmp_path / "clean.log")
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr[-3000:]
    assert straight_run.wait(timeout=900) == 0, (tmp_path / "clean.log").read_text()[-3000:]
    assert json.loads((clean / "summary.json").read_text())["embedding_jobs_computed"] == 2
    key = ["cell_id", "metric"]
    resumed = pq.read_table(out / "results.parquet").to_pandas().sort_values(key).reset_index(drop=True)
    straight = pq.read_table(clean / "results.parquet").to_pandas().sort_values(key).reset_index(drop=True)
    assert len(resumed) == len(straight) > 0
    assert resumed[key].equals(straight[key])
    assert (resumed["value"] - straight["value"]).abs().max() < 1e-9
