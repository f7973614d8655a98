"""The cluster command on a cluster that starts empty: Ray's fake autoscaler runs real raylets here, a
head with no CPUs and worker types "cpu" and "gpu" that scale from zero; output and cache on a real S3
endpoint (moto). The nodes get their S3 credentials from their own environment, as instance roles
give them on AWS: none goes through a runtime environment.

Under autoscaler v2 (what Ray runs under `ray up` and KubeRay) and v1: one reference sweep, a GPU
node launched from zero, the nodes scaling back to none, a local output refused; a GPU node type the
cloud refuses (quota, capacity) fails the run in one line naming the type and the cloud's reason,
and one that never comes fails it at resources.gpu_wait_s. The faults against the reference (S3 going
away mid-embedding, a worker node lost mid-embedding and mid-cells, each compared with the reference
to the last digit) run under v2 alone: they test raddist's recovery, not the autoscaler, and CI time
is counted.
"""

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import boto3
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from tests.fake_cluster import FakeCluster
from tests.helpers import SECRET

SALT = "multinode-test-salt"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class RestartableMoto:
    """A moto S3 endpoint that can go away and come back on the same port, its buckets intact."""

    def __init__(self):
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        self.host, self.port = self.server.get_host_and_port()

    def stop(self):
        self.server.stop()

    def start(self):
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()


@pytest.fixture(scope="module")
def moto_restartable():
    server = RestartableMoto()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def moto_endpoint(moto_restartable):
    return f"http://{moto_restartable.host}:{moto_restartable.port}"


@pytest.fixture(scope="module")
def s3(moto_endpoint):
    env = {"AWS_ENDPOINT_URL": moto_endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": SECRET,
           "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true", "RADDIST_S3_ATTEMPTS": "2"}
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key=SECRET)
    client.create_bucket(Bucket="runs")
    client.put_bucket_versioning(Bucket="runs", VersioningConfiguration={"Status": "Enabled"})
    return env, client


@contextlib.contextmanager
def fake_cluster(s3, node_types: dict, autoscaler: str):
    env, _ = s3
    # a short temp dir: the nodes' socket paths (…/sessions_…/sockets/plasma_store.<n>) must stay under
    # the 107 bytes of AF_UNIX, and replacement nodes get ever larger numbers
    temp_dir = tempfile.mkdtemp(prefix="rfc-", dir="/tmp")
    fake = FakeCluster(temp_dir, node_types, autoscaler_v2=autoscaler == "v2")
    try:
        fake.start({**env, "RADDIST_FAKE_GPUS": "1"})
        yield fake
    finally:
        fake.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module", params=["v2", "v1"])
def cluster(s3, request):
    with fake_cluster(s3, {"cpu": {"CPU": 2}, "gpu": {"CPU": 1, "GPU": 1}}, request.param) as fake:
        yield fake


@pytest.fixture
def v2_only(cluster):
    if not cluster.autoscaler_v2:
        pytest.skip("a fault of raddist's recovery, run under autoscaler v2 only (CI time)")


@pytest.fixture(scope="module")
def config(synthetic_data, tmp_path_factory):
    cfg = {
        "name": "multinode",
        "backbones": [{"name": "tiny_vit", "weights": "random"}],
        "tasks": [{"name": "brain", "manifest": f"{synthetic_data}/brain_mri/manifest.parquet", "type": "multiclass",
                   "labels": ["label"], "classes": ["meningioma", "glioma", "pituitary"]}],
        "protocols": [{"name": "knn", "params": {"ks": [5, 10]}}, {"name": "logreg", "params": {"cs": [1.0]}},
                      {"name": "fewshot", "params": {"shots": [2], "draws": 2, "probe": "knn"}}],
        "bootstrap": 50,
        "resources": {"embed_batch_size": 16, "max_concurrent_cells": 2, "progress_interval_s": 2},
    }
    path = tmp_path_factory.mktemp("config") / "multinode.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def variant(config: str, tmp_path, **resources) -> str:
    """The config with some resources changed, as a file of its own."""
    cfg = yaml.safe_load(open(config))
    cfg["resources"].update(resources)
    path = tmp_path / "variant.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def sweep(cluster, s3, config, output, cache="s3://runs/cache", wait=True, **env):
    cmd = [sys.executable, "jobs/sweep.py", config, "--output", output, "--cache", cache]
    run_env = cluster.env({**s3[0], "RADDIST_SALT": SALT, **env})
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=REPO, env=run_env, capture_output=True, text=True, timeout=600)


def read(client, key):
    return client.get_object(Bucket="runs", Key=key)["Body"].read()


def results(client, prefix):
    df = pq.read_table(io.BytesIO(read(client, f"{prefix}/results.parquet"))).to_pandas()
    return df.sort_values(["cell_id", "metric"]).reset_index(drop=True)[["cell_id", "metric", "value", "ci_low"]]


def keys(client, prefix):
    pages = client.get_paginator("list_objects_v2").paginate(Bucket="runs", Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


@pytest.fixture(scope="module")
def reference(cluster, s3, config):
    """The uninterrupted sweep: every cell done, on a GPU node the autoscaler brought up."""
    for prefix in ("reference/", "cache-reference/"):  # the bucket outlives a cluster: each autoscaler runs afresh
        for key in keys(s3[1], prefix):
            s3[1].delete_object(Bucket="runs", Key=key)
    proc = sweep(cluster, s3, config, "s3://runs/reference", cache="s3://runs/cache-reference")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_the_sweep_completes_on_a_gpu_node_the_autoscaler_brought_up(cluster, s3, reference):
    summary = json.loads(read(s3[1], "reference/summary.json"))
    assert summary["cells_done"] == summary["cells_total"] == 4 and summary["cells_failed"] == 0
    assert summary["device"] == "gpu"  # auto: the autoscaler could add a GPU node, so it did
    assert "embedding tiny_vit:" in reference.stdout and "ETA" in reference.stdout  # progress while embedding
    [meta] = [k for k in keys(s3[1], "cache-reference/features") if k.endswith("meta.json")]
    workers = json.loads(read(s3[1], meta))["workers"]
    assert workers and all(len(w["gpus"]) == 1 for w in workers)  # every embedding actor held a node's GPU
    assert SECRET not in reference.stdout + reference.stderr


def test_the_workers_scale_back_to_none_when_idle(cluster, reference):
    deadline = time.time() + 90
    while cluster.workers() and time.time() < deadline:
        time.sleep(3)
    assert cluster.workers() == []


def test_a_local_output_is_refused_before_any_cell(cluster, s3, config, tmp_path):
    proc = sweep(cluster, s3, config, str(tmp_path / "out"))
    assert proc.returncode == 2
    assert "storage.output is a local path" in proc.stderr and "shared_filesystem" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 3 and not (tmp_path / "out" / "cells").exists()


def test_s3_lost_mid_embedding_fails_cleanly_and_the_resubmit_equals_the_reference(
        v2_only, cluster, s3, config, reference, moto_restartable):
    client = s3[1]
    # the outage leaves its lease on the key behind (S3 is down when the run ends): a short TTL lets
    # the resubmit take it over in seconds rather than the default two minutes
    ttl = {"RADDIST_LEASE_TTL_S": "8"}
    running = sweep(cluster, s3, config, "s3://runs/outage", cache="s3://runs/cache-outage", wait=False, **ttl)
    deadline = time.time() + 300
    while not any("/parts/" in k for k in keys(client, "cache-outage/features")) and time.time() < deadline:
        time.sleep(0.2)
    moto_restartable.stop()
    out, err = running.communicate(timeout=600)
    moto_restartable.start()
    assert running.returncode != 0
    assert "s3://runs/" in err + out and ("cannot connect" in err + out)
    assert not any(k.endswith("meta.json") for k in keys(client, "cache-outage/features"))  # nothing complete

    again = sweep(cluster, s3, config, "s3://runs/outage", cache="s3://runs/cache-outage", **ttl)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    np.testing.assert_array_equal(results(client, "outage").to_numpy(), results(client, "reference").to_numpy())


def test_a_node_lost_mid_embedding_and_mid_cells_loses_nothing_and_reruns_no_finished_cell(
        v2_only, cluster, s3, config, reference):
    from raddist.embed.cache import EmbeddingCache

    client = s3[1]
    running = sweep(cluster, s3, config, "s3://runs/lost", cache="s3://runs/cache-lost", wait=False)
    killed = []

    def kill_a_node(resource, when):
        deadline = time.time() + 300
        while time.time() < deadline and running.poll() is None:
            if when():
                raylets = cluster.raylet_pids()
                nodes = [n for n in cluster.node_ids(resource) if n in raylets]
                if nodes:
                    os.kill(raylets[nodes[0]], 9)  # as a spot preemption would
                    killed.append(nodes[0])
                    return
            time.sleep(0.2)

    # the GPU node while it embeds, then a CPU node while cells run there
    kill_a_node("GPU", lambda: any("/parts/" in k for k in keys(client, "cache-lost/features")))
    kill_a_node("CPU", lambda: any(k.endswith("cell.json") for k in keys(client, "lost/cells")))
    out, err = running.communicate(timeout=600)
    assert running.returncode == 0, out[-3000:] + err[-3000:]
    assert len(killed) == 2

    cache_env = {**os.environ, **s3[0]}
    os.environ.update(cache_env)
    [ref_key] = [k.split("/")[2] for k in keys(client, "cache-reference/features") if k.endswith("meta.json")]
    [key] = [k.split("/")[2] for k in keys(client, "cache-lost/features") if k.endswith("meta.json")]
    assert key == ref_key  # same inputs, same key
    a = EmbeddingCache("s3://runs/cache-reference").load(ref_key)
    b = EmbeddingCache("s3://runs/cache-lost").load(key)
    assert len(b.rows) == len(set(b.rows)) == len(a.rows)  # no row lost, none twice
    np.testing.assert_array_equal(b.features["cls"][np.argsort(b.rows)], a.features["cls"][np.argsort(a.rows)])
    np.testing.assert_array_equal(results(client, "lost").to_numpy(), results(client, "reference").to_numpy())
    versions = client.list_object_versions(Bucket="runs", Prefix="lost/cells/")["Versions"]
    written = [v["Key"] for v in versions if v["Key"].endswith("cell.json")]
    assert len(written) == len(set(written)) == 4  # every cell finished exactly once


@pytest.mark.parametrize("autoscaler", ["v2", "v1"])
def test_a_gpu_node_type_the_cloud_refuses_or_never_brings_fails_the_run_in_one_line(s3, config, tmp_path, autoscaler):
    with fake_cluster(s3, {"gpu": {"CPU": 1, "GPU": 1}}, autoscaler) as fake:
        fake.set_faults({"gpu": {"refuse": ["InsufficientInstanceCapacity", "We currently do not have sufficient "
                                            "p3.2xlarge capacity in the Availability Zone you requested"]}})
        start = time.time()
        refused = sweep(fake, s3, variant(config, tmp_path, gpu_wait_s=600), "s3://runs/refused")
        seconds = time.time() - start
        assert refused.returncode == 2, refused.stdout[-3000:] + refused.stderr[-3000:]
        [line] = [ln for ln in refused.stderr.splitlines() if ln.startswith("raddist: error:")]
        assert line == ("raddist: error: the autoscaler could not launch node type 'gpu' for a GPU: "
                        "InsufficientInstanceCapacity: We currently do not have sufficient p3.2xlarge capacity in "
                        "the Availability Zone you requested")
        assert len(refused.stderr.strip().splitlines()) <= 3
        assert seconds < 600  # the refusal ended the run, not the wait
        assert not keys(s3[1], "refused/cells")

        fake.set_faults({"gpu": {"hang": True}})  # the cloud accepts the launch; the node never comes
        start = time.time()
        hung = sweep(fake, s3, variant(config, tmp_path, device="gpu", gpu_wait_s=15), "s3://runs/hung")
        seconds = time.time() - start
        assert hung.returncode == 2, hung.stdout[-3000:] + hung.stderr[-3000:]
        [line] = [ln for ln in hung.stderr.splitlines() if ln.startswith("raddist: error:")]
        assert line.startswith("raddist: error: no GPU node came within resources.gpu_wait_s=15s (the autoscaler "
                               "is launching: ")
        assert 15 <= seconds < 15 + 300  # the wait, and driver start-up on a loaded machine
