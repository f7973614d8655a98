"""The deployment's salt: a file in object storage (RADDIST_SALT_FILE) is made once and read by every
later driver; the driver's own file is refused, before any work, on a cluster whose work runs on
other nodes, since it dies with the head and a resumed run on a new head would make another."""

import importlib.util
from pathlib import Path

import pytest

from raddist import privacy
from raddist.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def fresh_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("RADDIST_SALT", "RADDIST_SALT_FILE"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "home"


def test_a_salt_file_is_made_once_and_read_by_every_later_driver(fresh_home, tmp_path, monkeypatch):
    monkeypatch.setenv("RADDIST_SALT_FILE", str(tmp_path / "private" / "raddist-salt"))
    first = privacy.deployment_salt()
    assert len(first) == 32 and privacy.salt_source() == "RADDIST_SALT_FILE"
    monkeypatch.setenv("HOME", str(tmp_path / "another-head"))
    assert privacy.deployment_salt() == first
    assert not (fresh_home / ".config").exists() and not (tmp_path / "another-head").exists()
    assert privacy.pseudonym("patient-7", first) == privacy.pseudonym("patient-7", privacy.deployment_salt())


def test_the_local_salt_is_per_home(fresh_home, tmp_path, monkeypatch):
    one = privacy.deployment_salt()
    assert privacy.salt_source() == "local" and (fresh_home / ".config" / "raddist" / "salt").read_text() == one
    monkeypatch.setenv("HOME", str(tmp_path / "new-head"))
    assert privacy.deployment_salt() != one  # what a new head would do: hence the refusal below


@pytest.fixture(scope="module")
def head_only_cluster():
    """A cluster whose head runs no tasks (num_cpus=0), as cluster.yaml's and the RayJob's: its work
    runs on other nodes."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=0, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def _job_main():
    spec = importlib.util.spec_from_file_location("raddist_job_sweep", REPO / "jobs" / "sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_the_job_refuses_a_local_salt_on_a_cluster_before_any_work(head_only_cluster, fresh_home, tmp_path,
                                                                    capsys, monkeypatch):
    out, data = tmp_path / "out", tmp_path / "data"
    code = _job_main()(["smoke", "--output", str(out), "--synthetic", str(data)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "RADDIST_SALT_FILE is not set" in err
    assert "s3://bucket/private/raddist-salt" in err
    # nothing was made: no output (no run.json with a fingerprint), no data, no salt on the head
    assert not out.exists() and not data.exists() and not (fresh_home / ".config").exists()

    monkeypatch.setenv("RADDIST_SALT_FILE", str(tmp_path / "salt"))
    privacy.require_durable_salt()  # with the salt's location set, the same cluster is fine
    monkeypatch.delenv("RADDIST_SALT_FILE")
    monkeypatch.setenv("RADDIST_SALT", "a-salt-the-deployment-manages")
    privacy.require_durable_salt()
    monkeypatch.delenv("RADDIST_SALT")
    with pytest.raises(ConfigError):
        privacy.require_durable_salt()
