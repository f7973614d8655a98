"""Smoke tests of the benchmark scripts: they run and print their result keys. Speed is never asserted."""

import json
import os
import sys

import pytest

BENCHMARKS = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks")
sys.path.insert(0, os.path.abspath(BENCHMARKS))


def test_linear_heads_runs_and_heads_agree(capsys):
    import linear_heads

    out = linear_heads.main(["--samples", "300", "--epochs", "1", "--threads", "1", "--one-by-one-heads", "2"])
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last == json.loads(json.dumps(out, sort_keys=True))
    assert {"speedup", "parallel_head_epochs_s", "one_by_one_head_epochs_s"} <= set(last)
    assert last["by_threads"]["1"]["max_loss_gap"] < 1e-3  # the same computation, head by head


def test_rate_at_scale_cancels_fixed_costs():
    from embed_throughput import at_scale

    small = {"images": 100, "wall_s": 5.0 + 100 / 50, "cpu_s": 3.0 + 100 * 0.01, "first_batch_s": 1.0}
    large = {"images": 500, "wall_s": 5.0 + 500 / 50, "cpu_s": 3.0 + 500 * 0.01, "first_batch_s": 1.0}
    m = at_scale(small, large)
    assert m["img_s"] == pytest.approx(50) and m["fixed_s"] == pytest.approx(5.0)
    assert m["cpu_ms_per_img"] == pytest.approx(10) and m["fixed_cpu_s"] == pytest.approx(3.0)
    assert m["valid"]


def test_operator_use_reads_ray_data_stats():
    from embed_throughput import operator_use

    stats = ("Operator 2 MapBatches(_decode): 19 tasks executed, 19 blocks produced in 5.61s\n"
             "* Remote wall time: 70.77ms min, 244.45ms max, 128.19ms mean, 2.44s total\n"
             "* Remote cpu time: 65.66ms min, 78.75ms max, 72.37ms mean, 1.38s total\n")
    assert operator_use(stats) == {"decode_in_flight": 0.43, "decode_cpu_share": 0.57}
