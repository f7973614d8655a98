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


# --------------------------------------------------------------------------- the "Study scale" benchmarks, tiny


def _last_json(capsys, out):
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last == json.loads(json.dumps(out, sort_keys=True))
    return last


def test_decode_reuse_runs_and_both_ways_agree(capsys, tmp_path):
    import decode_reuse

    out = decode_reuse.main(["--rows", "40", "--distinct", "4", "--png-size", "128", "--warmup-rows", "0",
                             "--workdir", str(tmp_path)])
    last = _last_json(capsys, out)
    assert {"ratio", "cpu_ratio", "today_s", "decode_once_s"} <= set(last)
    assert last["features_equal"]  # the pixels read back are the pixels decoded
    assert [j["source"] for j in last["runs"]["today"]["jobs"]] == ["decoded"] * 3
    assert [j["source"] for j in last["runs"]["decode_once"]["jobs"]] == ["decoded", "pixels", "pixels"]


def test_driver_memory_runs_both_ways(capsys, tmp_path):
    import driver_memory

    out = driver_memory.main(["--rows", "120", "--warmup-rows", "0", "--image-size", "64", "--workdir", str(tmp_path)])
    last = _last_json(capsys, out)
    assert {"growth_mb", "ratio", "today_growth_mb"} <= set(last)
    runs = last["runs"]
    assert runs["today"]["images"] == runs["workers_write"]["images"] == 120
    assert runs["today"]["part_mb"] == runs["workers_write"]["part_mb"]  # the same features, written either way
    assert last["feature_bytes_per_image"] == 30176


def test_gather_runs_and_tables_agree(capsys):
    import gather

    out = gather.main(["--cells", "24", "--sequential-cells", "8", "--ranged-cells", "8", "--count-cells", "2",
                       "--latency-ms", "2", "--latency-cells", "8", "--latency-sequential-cells", "4"])
    last = _last_json(capsys, out)
    assert {"speedup", "speedup_ranged", "parallel_s", "sequential_s", "at_latency"} <= set(last)
    assert last["same_tables"]
    per_cell = {way: sum(r["per_cell"].values()) for way, r in last["requests"].items()}
    assert per_cell["parallel"] < per_cell["parallel_ranged"] < per_cell["sequential"]


def test_sweep_overhead_runs(capsys):
    import sweep_overhead

    out = sweep_overhead.main(["--counts", "8", "16", "--warmup", "0", "--cells-per-trial", "4"])
    last = _last_json(capsys, out)
    assert set(last["per_cell_s"]) == {"8", "16"} and last["runs"]["16"]["trials"] == 4
    assert {"overhead_ratio", "marginal_per_cell_s"} <= set(last)
