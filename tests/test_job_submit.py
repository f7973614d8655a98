"""`ray job submit` against a real local head: stop a sweep midway, resubmit, and get exactly
the results of an uninterrupted run, having run only the cells that were missing."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.fake_cluster import stop_cluster

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray(*args, check=True, timeout=600):
    proc = subprocess.run([RAY, *args], capture_output=True, text=True, env=ENV, timeout=timeout, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"ray {args[:2]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    import ray

    if ray.is_initialized():
        ray.shutdown()
    dash = _free_port()
    temp_dir = str(tmp_path_factory.mktemp("ray"))
    _ray("start", "--head", "--node-ip-address=127.0.0.1", "--port=0", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={_free_port()}", "--num-cpus=2",
         "--disable-usage-stats", f"--temp-dir={temp_dir}")
    address = f"http://127.0.0.1:{dash}"
    for _ in range(60):  # the job agent comes up a little after the head
        if _ray("job", "list", "--address", address, check=False).returncode == 0:
            break
        time.sleep(1)
    yield address
    stop_cluster(temp_dir)  # this head only: `ray stop` would stop every Ray on the machine


def _submit(address, out, data, cache, wait=True):
    args = ["job", "submit", "--address", address, "--working-dir", ".", "--no-wait"] if not wait else \
        ["job", "submit", "--address", address, "--working-dir", "."]
    proc = _ray(*args, "--", sys.executable, "jobs/sweep.py", "smoke", "--synthetic", str(data),
                "--output", str(out), "--cache", str(cache))
    return proc.stdout + proc.stderr


def _done_cells(out: Path) -> int:
    return len(list(out.glob("cells/*/cell.json")))


def test_stop_midway_then_resubmit_runs_only_the_rest(head, tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache"
    full, resumed = tmp_path / "full", tmp_path / "resumed"

    _submit(head, full, data, cache)
    total = json.loads((full / "summary.json").read_text())["cells_total"]
    assert json.loads((full / "summary.json").read_text())["cells_done"] == total >= 10

    text = _submit(head, resumed, data, cache, wait=False)
    job_id = next(w for w in text.split() if w.startswith("'raysubmit_") or w.startswith("raysubmit_")).strip("'")
    deadline = time.time() + 300
    while _done_cells(resumed) < 2 and time.time() < deadline:
        time.sleep(0.2)
    _ray("job", "stop", "--address", head, job_id)
    before = _done_cells(resumed)
    assert 2 <= before < total, f"stopped with {before} of {total} cells done"
    assert not (resumed / "summary.json").exists()

    _submit(head, resumed, data, cache)
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["cells_run_now"] == total - before
    assert summary["cells_done"] == total and summary["embedding_jobs_computed"] == 0

    def table(out):
        df = pq.read_table(out / "results.parquet").to_pandas()
        return df.sort_values(["cell_id", "metric"]).reset_index(drop=True)[["cell_id", "metric", "value", "ci_low", "ci_high"]]

    a, b = table(full), table(resumed)
    assert list(a.cell_id) == list(b.cell_id)
    assert (a.value.fillna(-1) == b.value.fillna(-1)).all() and (a.ci_low.fillna(-1) == b.ci_low.fillna(-1)).all()

    _submit(head, resumed, data, cache)  # a finished sweep resubmitted does nothing
    assert json.loads((resumed / "summary.json").read_text())["cells_run_now"] == 0
