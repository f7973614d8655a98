"""raddist.cluster on a real local Ray cluster: the per-node storage probe."""

import pytest

from raddist import cluster
from raddist.errors import StorageError


def test_every_node_probes_the_storage_and_a_node_that_left_is_skipped(ray_local, tmp_path, monkeypatch):
    real = cluster.alive_nodes()
    gone = {**real[0], "NodeID": "ab" * 28, "NodeManagerAddress": "192.0.2.9"}  # removed by an autoscaler
    monkeypatch.setattr(cluster, "alive_nodes", lambda: real + [gone])
    cluster.check_nodes_reach([str(tmp_path / "out"), str(tmp_path / "cache")])
    assert not list((tmp_path / "out" / ".raddist-probe").iterdir())  # each probe cleaned up after itself

    blocked = tmp_path / "blocked"
    blocked.write_text("a file where a directory should be")
    with pytest.raises(StorageError, match=rf"{blocked}.*node {real[0]['NodeManagerAddress']} cannot write and read it"):
        cluster.check_nodes_reach([str(blocked)])
