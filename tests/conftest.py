import os

import pytest

from tests.helpers import SECRET

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


@pytest.fixture(scope="module")
def ray_local():
    """A real local Ray cluster per test module, shut down after it, so that actors a failed
    test leaves behind never hold the next module's CPUs."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    # address="local": always a fresh cluster of our own, never one a `ray start` left running
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory):
    """The synthetic dataset, written once per test session."""
    from raddist.data.synthetic import write_synthetic

    out = tmp_path_factory.mktemp("synthetic")
    write_synthetic(str(out), seed=0, n_patients=30, size=128)
    return str(out)




@pytest.fixture(scope="session")
def synthetic_seg_data(tmp_path_factory):
    """The synthetic segmentation and volume sets ({"seg2d", "seg3d", "volcls": manifest uri}), written once."""
    from raddist.data.synthetic_seg import write_synthetic_seg

    return write_synthetic_seg(str(tmp_path_factory.mktemp("synthetic-seg")), seed=0)


@pytest.fixture
def one_thread():
    """torch on one thread for the test: two OpenMP threads on a shared 2-core box stall on each other."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def moto_endpoint():
    """A real S3 HTTP endpoint (moto) on a free local port, for the whole module."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(moto_endpoint, monkeypatch):
    """An empty bucket on the moto endpoint, with the environment raddist.storage reads set."""
    import uuid

    import boto3

    for key, value in {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    name = f"raddist-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name
