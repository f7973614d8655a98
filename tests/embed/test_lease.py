"""One writer per cache entry: a live lease keeps others out, an expired one is taken over, and a
lease is renewed while its holder works."""

import json
import time

from raddist.embed.lease import Leases


def test_a_live_lease_keeps_others_out_and_an_expired_one_is_taken_over(tmp_path, monkeypatch):
    monkeypatch.setattr("raddist.embed.lease.SETTLE_S", 0.01)
    uri = str(tmp_path / "entry" / "lease.json")
    first, second = Leases(ttl_s=0.6), Leases(ttl_s=0.6)
    first._renew = lambda: None  # a holder that stops renewing: as if it was killed
    assert first.try_take(uri)
    assert not second.try_take(uri) and second.holder(uri)["holder"] == first.token
    time.sleep(0.7)
    assert second.holder(uri) is None and second.try_take(uri)
    assert json.loads(open(uri).read())["holder"] == second.token
    second.release(uri)
    assert not (tmp_path / "entry" / "lease.json").exists()


def test_a_holder_renews_its_lease_while_it_works(tmp_path, monkeypatch):
    monkeypatch.setattr("raddist.embed.lease.SETTLE_S", 0.01)
    uri = str(tmp_path / "lease.json")
    holder, other = Leases(ttl_s=0.6), Leases(ttl_s=0.6)
    assert holder.try_take(uri)
    time.sleep(1.5)  # several TTLs: renewed every TTL / 3
    assert not other.try_take(uri)
    holder.close()
    assert other.try_take(uri)
    other.close()


def test_of_many_racing_for_an_absent_local_lease_exactly_one_takes_it_at_once(tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr("raddist.embed.lease.SETTLE_S", 5.0)  # the object-store path would wait this long
    uri = str(tmp_path / "entry" / "lease.json")
    racers = [Leases(ttl_s=60) for _ in range(16)]
    start = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        took = list(pool.map(lambda lease: lease.try_take(uri), racers))
    assert sum(took) == 1 and time.perf_counter() - start < 2.0
    winner = racers[took.index(True)]
    assert json.loads(open(uri).read())["holder"] == winner.token
    assert sorted(p.name for p in (tmp_path / "entry").iterdir()) == ["lease.json"]  # no temporary left
    for lease in racers:
        lease.close()


RUN_ONE_JOB = """
import json, sys, time
import ray
from raddist import config as config_lib
from raddist.embed import jobs
from raddist.embed.cache import EmbeddingCache
from raddist.plan import make_plan

jobs.WAIT_POLL_S = 0.5  # a waiter looks at the lease often: it takes over soon after the lease expires
if sys.argv[2] == "hold":  # the holder stops mid-job once its first part is recorded, its lease live, till killed
    embed_group = jobs.embed_group

    def held(group, model, kind, resources, device, on_block):
        def then_hold(*block):
            on_block(*block)
            print("HOLDING", flush=True)
            time.sleep(3600)
        embed_group(group, model, kind, resources, device, then_hold)
    jobs.embed_group = held
ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
spec = config_lib.load(sys.argv[1])
job = next(iter(make_plan(spec).jobs.values()))
outcome = jobs.run_embedding_jobs([job], EmbeddingCache(spec.storage.cache), spec.resources,
                                  say=lambda line: print(line, flush=True))[0]
print("OUTCOME " + json.dumps({"computed": outcome.computed, "images": outcome.images, "key": outcome.key}), flush=True)
"""


def test_a_run_waits_for_the_holder_and_takes_over_when_it_is_killed(synthetic_data, tmp_path):
    """The holder of an entry's lease is killed mid-job (a part written, the entry not complete;
    SIGKILL to its process group: driver and Ray) while a second run waits for it: the second run
    saw the lease live and waited, took the entry over only once the lease had expired, and
    computed it, once, completely."""
    import os
    import queue
    import signal
    import subprocess
    import sys
    import threading

    import yaml

    from raddist.embed.cache import EmbeddingCache
    from tests.helpers import copied_manifest

    manifest, n = copied_manifest(synthetic_data, tmp_path, copies=2)  # several blocks: the holder dies mid-job
    cache = tmp_path / "cache"
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "backbones": [{"name": "tiny_vit", "weights": "random"}],
        "tasks": [{"name": "t", "manifest": manifest, "type": "multiclass", "labels": ["label"], "classes": ["a", "b", "c"]}],
        "protocols": [{"name": "knn"}], "storage": {"cache": str(cache)}, "resources": {"embed_batch_size": 4}}))
    env = {**os.environ, "RADDIST_LEASE_TTL_S": "6"}
    runs = []

    def start(role):
        proc = subprocess.Popen([sys.executable, "-c", RUN_ONE_JOB, str(config), role], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, start_new_session=True)
        lines = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line.rstrip("\n")) for line in proc.stdout], daemon=True).start()
        runs.append(proc)
        return proc, lines

    def wait_for(what, condition, procs, timeout=600):  # a loaded 2-core machine starts Ray and the model slowly
        deadline = time.time() + timeout
        while not condition():
            assert time.time() < deadline, f"no {what} within {timeout} s"
            assert all(p.poll() is None for p in procs), f"a run ended before {what}"
            time.sleep(0.1)

    def said(lines, seen, text):
        while not lines.empty():
            seen.append(lines.get())
        return next((line for line in seen if text in line), None)

    try:
        first, first_lines = start("hold")
        wait_for("lease taken by the first run", lambda: list(cache.glob("features/*/lease.json")), [first])
        lease = next(iter(cache.glob("features/*/lease.json")))
        holder = json.loads(lease.read_text())["holder"]
        second, second_lines = start("run")  # its Ray starts while the first one works
        first_seen, second_seen = [], []
        wait_for("first part", lambda: said(first_lines, first_seen, "HOLDING"), [first, second])
        wait_for("wait by the second run", lambda: said(second_lines, second_seen, "waiting for another run"),
                 [first, second])
        assert f"waiting for another run ({holder})" in said(second_lines, second_seen, "waiting for another run")
        assert list(lease.parent.glob("parts/*.parquet")) and not (lease.parent / "meta.json").exists()  # mid-job
        os.killpg(first.pid, signal.SIGKILL)  # its lease stays live up to RADDIST_LEASE_TTL_S more
        first.wait(timeout=60)
        dead = json.loads(lease.read_text())
        assert dead["holder"] == holder and dead["expires"] > time.time()  # still live: the second must wait
        wait_for("outcome of the second run", lambda: said(second_lines, second_seen, "OUTCOME "), [second], timeout=300)
        outcome = json.loads(said(second_lines, second_seen, "OUTCOME ").split("OUTCOME ", 1)[1])
    finally:
        for proc in runs:  # the second run is done once it printed its outcome: its Ray's shutdown is not awaited
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=60)
    assert outcome["computed"] and outcome["images"] == n
    cached = EmbeddingCache(str(cache)).load(outcome["key"])
    assert len(cached.rows) == len(set(cached.rows)) == n  # no row lost, none twice
    parts = list(lease.parent.glob("parts/*.parquet"))
    assert len(parts) > 1 and min(p.stat().st_mtime for p in parts) > dead["expires"] - 0.05  # taken over once expired
    assert not lease.exists()
