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
import json, sys
import ray
from raddist import config as config_lib
from raddist.embed.cache import EmbeddingCache
from raddist.embed.jobs import run_embedding_job
from raddist.plan import make_plan

ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
spec = config_lib.load(sys.argv[1])
job = next(iter(make_plan(spec).jobs.values()))
outcome = run_embedding_job(job, EmbeddingCache(spec.storage.cache), spec.resources)
print("OUTCOME " + json.dumps({"computed": outcome.computed, "images": outcome.images, "key": outcome.key}))
"""


def test_a_run_waits_for_the_holder_and_takes_over_when_it_is_killed(synthetic_data, tmp_path):
    """The holder of an entry's lease is killed mid-job (SIGKILL to its process group: driver and
    Ray): a second run finds the lease still live and waits, takes the entry over once the lease
    expires, and computes it, once, completely."""
    import os
    import signal
    import subprocess
    import sys

    import yaml

    from raddist.embed.cache import EmbeddingCache
    from tests.helpers import copied_manifest

    manifest, n = copied_manifest(synthetic_data, tmp_path, copies=24)
    cache = tmp_path / "cache"
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "backbones": [{"name": "tiny_vit", "weights": "random"}],
        "tasks": [{"name": "t", "manifest": manifest, "type": "multiclass", "labels": ["label"], "classes": ["a", "b", "c"]}],
        "protocols": [{"name": "knn"}], "storage": {"cache": str(cache)}, "resources": {"embed_batch_size": 4}}))
    env = {**os.environ, "RADDIST_LEASE_TTL_S": "6"}

    def start():
        return subprocess.Popen([sys.executable, "-c", RUN_ONE_JOB, str(config)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, start_new_session=True)

    def parts():
        return list(cache.glob("features/*/parts/*.parquet"))

    first = start()
    deadline = time.time() + 600  # a loaded 2-core machine starts Ray and the model slowly
    while not parts() and time.time() < deadline and first.poll() is None:
        time.sleep(0.1)
    assert parts() and first.poll() is None, "the first run finished or wrote nothing"
    os.killpg(first.pid, signal.SIGKILL)  # mid-job: its lease is live for up to RADDIST_LEASE_TTL_S more
    killed_at = time.time()
    assert list(cache.glob("features/*/lease.json"))
    second = start()
    out, _ = second.communicate(timeout=300)
    outcome = json.loads(next(line for line in out.splitlines() if line.startswith("OUTCOME "))[8:])
    assert outcome["computed"] and outcome["images"] == n
    assert time.time() - killed_at >= 6 - 1  # it waited for the dead holder's lease to expire
    cached = EmbeddingCache(str(cache)).load(outcome["key"])
    assert len(cached.rows) == len(set(cached.rows)) == n  # no row lost, none twice
