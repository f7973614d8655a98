import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


@pytest.fixture(scope="module")
def ray_local():
    """A real local Ray cluster per test module, shut down after it, so that actors a failed
    test leaves behind never hold the next module's CPUs."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory):
    """The synthetic dataset, written once per test session."""
    from raddist.data.synthetic import write_synthetic

    out = tmp_path_factory.mktemp("synthetic")
    write_synthetic(str(out), seed=0, n_patients=30, size=128)
    return str(out)
