"""An embedding actor killed mid-job: Ray restarts it and retries its batches; the job completes
with no row lost or duplicated and the same embeddings as an uninterrupted run."""

import os
import signal
import threading
import time

import numpy as np

from raddist import spec as spec_lib
from raddist.embed.cache import EmbeddingCache
from raddist.embed.jobs import run_embedding_job
from raddist.plan import make_plan
from tests.helpers import copied_manifest


def _job(manifest_uri):
    spec = spec_lib.parse({
        "backbones": [{"name": "tiny_vit", "weights": "random"}],
        "tasks": [{"name": "t", "manifest": manifest_uri, "type": "multiclass", "labels": ["label"],
                   "classes": ["a", "b", "c"]}],
        "protocols": [{"name": "knn"}],
        "resources": {"embed_batch_size": 4},
    })
    return spec, next(iter(make_plan(spec).jobs.values()))


def _embed_actor_pid():
    # the GCS actor table of this test's cluster (the state API would need the dashboard)
    from ray._private import state

    for actor in state.actors().values():
        if "EmbedAndWrite" in actor["ActorClassName"] and actor["State"] == "ALIVE" and actor.get("Pid"):
            return actor["Pid"]
    return None


def test_killed_embedding_actor_loses_and_duplicates_nothing(ray_local, synthetic_data, tmp_path):
    manifest_uri, n = copied_manifest(synthetic_data, tmp_path)  # large enough to outlast the kill
    spec, job = _job(manifest_uri)

    reference = EmbeddingCache(str(tmp_path / "ref"))
    ref = reference.load(run_embedding_job(job, reference, spec.resources).key)

    cache = EmbeddingCache(str(tmp_path / "killed"))
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.update(o=run_embedding_job(job, cache, spec.resources)))
    worker.start()
    killed = False
    deadline = time.time() + 120
    while worker.is_alive() and time.time() < deadline and not killed:
        pid = _embed_actor_pid()
        if pid:
            time.sleep(1.0)  # let it embed some batches first
            if worker.is_alive():
                os.kill(pid, signal.SIGKILL)
                killed = True
        time.sleep(0.2)
    worker.join(timeout=300)
    assert killed, "the job finished before the actor could be killed; make the dataset larger"

    got = cache.load(outcome["o"].key)
    assert len(got.rows) == len(set(got.rows)) == n
    order = {s: i for i, s in enumerate(ref.rows)}
    idx = np.array([order[s] for s in got.rows])
    np.testing.assert_array_equal(got.features["cls"], ref.features["cls"][idx])
