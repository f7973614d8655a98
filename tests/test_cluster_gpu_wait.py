"""What raddist sizes and waits for, on a real local Ray cluster (2 CPUs, no GPU, no autoscaler):
capacity is all the cluster has; a GPU that cannot come fails at once or within resources.gpu_wait_s,
in one line. The autoscaler's side (v1 and v2: launches, failed launches, a GPU node from zero) is in
test_multinode.py, on Ray's fake autoscaler."""

import time

import pyarrow as pa
import pytest

from raddist import cluster
from raddist.embed.pipeline import GroupJob, embed_group, layout
from raddist.protocols.trainable.search import concurrent_fits
from raddist.spec import ResourcesSpec


def test_a_fixed_cluster_can_hold_what_it_has_and_sizes_follow_the_config(ray_local):
    assert cluster.capacity() == {k: float(v) for k, v in ray_local.cluster_resources().items()}
    # 2 CPUs, a cell holding 0.5, a fit of one worker at 0.75 CPU: one fit at a time of the 4 learning rates
    assert concurrent_fits(1, use_gpu=False, cell_cpus=0.5, lrs=4) == 1


def test_with_an_autoscaler_the_search_and_the_pool_are_bounded_by_what_it_can_add(ray_local, monkeypatch):
    monkeypatch.setattr(cluster, "capacity", lambda: None)  # an autoscaler that reports no maximum
    assert concurrent_fits(1, use_gpu=True, cell_cpus=0.5, lrs=4) == 4  # all four, though no GPU is up yet
    assert layout(ResourcesSpec(), "gpu")["max"] == 8 and layout(ResourcesSpec(embed_actors=3), "gpu")["max"] == 3
    # an autoscaler whose node types hold at most 2 GPUs and 16 CPUs
    monkeypatch.setattr(cluster, "capacity", lambda: {"CPU": 16.0, "GPU": 2.0})
    assert concurrent_fits(1, use_gpu=True, cell_cpus=0.5, lrs=4) == 2
    assert layout(ResourcesSpec(), "gpu")["max"] == 2


def test_a_gpu_on_a_cluster_without_gpus_or_autoscaler_fails_at_once(ray_local):
    assert cluster.resolve_device("auto") == "cpu"
    start = time.time()
    with pytest.raises(cluster.GpuUnavailable, match="no node of this Ray cluster has a GPU and it has no autoscaler"):
        cluster.resolve_device("gpu", wait_s=600)
    assert time.time() - start < 30  # no wait for what cannot come


def test_embedding_actors_that_get_no_gpu_within_the_wait_fail_the_group_in_one_line(ray_local, tmp_path):
    rows = pa.table({"uri": [str(tmp_path / "a.png")], "mask_uri": [""], "modality": [""], "row": [0]})
    job = GroupJob(entry=str(tmp_path / "entry"), contract={"size": 32}, rows=rows)
    model = {"backbone": "tiny_vit", "weights": "random", "size": 32,
             "features": {"n_last_blocks": 1, "patch_mean": False}}
    kind = {"masks": False, "volumes": False, "device_jpeg": False}
    start = time.time()
    with pytest.raises(cluster.GpuUnavailable) as failed:
        embed_group([job], model, kind, ResourcesSpec(gpu_wait_s=3), "gpu", lambda *a: None)
    assert str(failed.value) == ("no embedding actor got a GPU within resources.gpu_wait_s=3s: the GPU nodes are "
                                 "busy, or the autoscaler cannot add one")
    assert 3 <= time.time() - start < 60
    assert ray_local.data.DataContext.get_current().wait_for_min_actors_s <= 0  # the driver's context restored
