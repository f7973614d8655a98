"""Every benchmark script runs, tiny (`--smoke`), as its own process, as a person would run it. The
scripts are found on disk, so a new benchmark without a smoke mode fails here. Each prints its result
as one JSON line; where a script checks that its two ways agree, that is asserted. Speed never is.

gpu_check.sh, the script a lent GPU runs, is checked on the CPU with --dry-run: each of its steps'
scripts imports and knows every option the step passes."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

BENCHMARKS = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
REPO = os.path.dirname(BENCHMARKS)
sys.path.insert(0, BENCHMARKS)


def scripts() -> list:
    """The benchmark scripts: every .py in benchmarks/ that runs as a program."""
    found = []
    for name in sorted(os.listdir(BENCHMARKS)):
        if name.endswith(".py"):
            with open(os.path.join(BENCHMARKS, name)) as f:
                if re.search(r'^if __name__ == "__main__":', f.read(), re.M):
                    found.append(name)
    return found


def run_script(name: str, args: list, timeout: int = 420) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(BENCHMARKS, name), *args], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": REPO}, timeout=timeout)


def last_json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# what each script's smoke run must show beyond running: its two ways agree
def _decode_reuse(out):
    assert {"ratio", "cpu_ratio", "today_s", "decode_once_s"} <= set(out)
    assert out["features_equal"]  # the pixels read back are the pixels decoded
    assert out["backbones"] == ["tiny_vit", "tiny_cnn"]  # smoke: two backbones, one decodes, one reads its pixels
    assert [j["source"] for j in out["runs"]["today"]["jobs"]] == ["decoded", "decoded"]
    assert [j["source"] for j in out["runs"]["decode_once"]["jobs"]] == ["decoded", "pixels"]


def _driver_memory(out):
    runs = out["runs"]
    assert runs["today"]["images"] == runs["workers_write"]["images"] == 120
    assert runs["today"]["part_mb"] == runs["workers_write"]["part_mb"]  # the same features, written either way
    # each way ran its own code (the smoke runs both in one driver, the old way patched in and out)
    assert [runs[w]["embed_group"] for w in ("today", "workers_write")] == ["embed_group_driver_writes", "embed_group"]
    assert out["feature_bytes_per_image"] == 30176 and {"growth_mb", "ratio"} <= set(out)


def _gather(out):
    assert out["same_tables"] and {"speedup", "speedup_ranged", "at_latency"} <= set(out)
    per_cell = {way: sum(r["per_cell"].values()) for way, r in out["requests"].items()}
    assert per_cell["parallel"] < per_cell["parallel_ranged"] < per_cell["sequential"]


def _sweep_overhead(out):
    assert set(out["per_cell_s"]) == {"4", "8"} and out["cells_per_trial"] == 4
    assert [out["runs"][c]["trials"] for c in ("4", "8")] == [1, 2]
    assert {"overhead_ratio", "marginal_per_cell_s"} <= set(out)


def _protocol_cost(out):
    assert out["embedding_jobs"] == 2 and out["cells"] == 18  # smoke.yaml, tiny_vit, seed 0
    assert out["raddist_forwards"] == sum(out["images_per_job"].values())
    assert out["forward_ratio"] == 9.0  # every job feeds 9 cells: the reference embeds 9 times


def _convergence(out):
    assert out["runs"]["shipped"]["cells"] == out["runs"]["raised"]["cells"] == 1  # tiny_vit x brain_mri x linear
    assert out["results_compared"] > 0 and out["results_only_in_one"] == 0  # both runs scored the same results
    assert [sum(out["stopped"][run].values()) for run in ("shipped", "raised")] == [1, 1]


def _embed_throughput(out):
    assert out["rows"] == [16, 32] and out["backbone"] == "tiny_vit"
    assert {"pipeline_img_s", "naive_img_s", "ratio", "ceiling_share", "pipeline_actor"} <= set(out)


CHECKS = {"decode_reuse.py": _decode_reuse, "driver_memory.py": _driver_memory, "gather.py": _gather,
          "sweep_overhead.py": _sweep_overhead, "protocol_cost.py": _protocol_cost,
          "embed_throughput.py": _embed_throughput, "convergence.py": _convergence}
# scripts whose owners are adding --smoke; non-strict, so the test runs them once they have it
PENDING = {"linear_heads.py": "the convergence work adds --smoke"}


def test_the_scripts_are_found():
    found = scripts()
    assert "common.py" not in found and set(CHECKS) <= set(found), found


@pytest.mark.parametrize("name", scripts())
def test_every_benchmark_runs_in_smoke_mode(name):
    help_text = run_script(name, ["--help"], timeout=60)
    assert help_text.returncode == 0, help_text.stderr[-2000:]
    if "--smoke" not in help_text.stdout:
        if name in PENDING:
            pytest.xfail(f"{name}: no --smoke yet ({PENDING[name]})")
        pytest.fail(f"benchmarks/{name} has no --smoke mode: add one (common.parse_args) so that CI runs it")
    out = last_json(run_script(name, ["--smoke"]))
    CHECKS.get(name, lambda out: None)(out)


def private_uses(path: str) -> list:
    """`name` of every private raddist name a script imports or reaches through a raddist module."""
    import ast

    with open(path) as f:
        tree = ast.parse(f.read())
    modules, found = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("raddist"):
            found += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
            modules |= {a.asname or a.name for a in node.names}  # modules or not: attributes of either count
        elif isinstance(node, ast.Import):
            modules |= {a.asname or a.name for a in node.names if a.name.startswith("raddist")}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules \
                and node.attr.startswith("_") and not node.attr.startswith("__"):
            found.append(f"{node.value.id}.{node.attr}")
    return found


@pytest.mark.parametrize("name", [n for n in os.listdir(BENCHMARKS) if n.endswith(".py")])
def test_benchmarks_use_only_public_names_of_raddist(name):
    assert not private_uses(os.path.join(BENCHMARKS, name)), (
        f"benchmarks/{name} uses raddist's private names {private_uses(os.path.join(BENCHMARKS, name))}: "
        "call a public function (or ask for one)")


def test_the_private_name_check_sees_imports_and_attributes(tmp_path):
    script = tmp_path / "b.py"
    script.write_text("from raddist.results import _concat, gather\nfrom raddist.embed import pipeline\n"
                      "def f():\n    import raddist.storage as st\n    return pipeline._sources, st._fs, pipeline.layout\n")
    assert private_uses(str(script)) == ["raddist.results._concat", "pipeline._sources", "st._fs"]


def test_linear_heads_heads_agree(capsys):
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

    stats = ("Operator 2 MapBatches(_decode_block): 19 tasks executed, 19 blocks produced in 5.61s\n"
             "* Remote wall time: 70.77ms min, 244.45ms max, 128.19ms mean, 2.44s total\n"
             "* Remote cpu time: 65.66ms min, 78.75ms max, 72.37ms mean, 1.38s total\n")
    assert operator_use(stats) == {"decode_in_flight": 0.43, "decode_cpu_share": 0.57}


# --------------------------------------------------------------------------- gpu_check.sh on a CPU


def dry_run(root: str, out) -> tuple:
    """(exit status, the lines of dry-run.txt) of gpu_check.sh --dry-run in the repository `root`."""
    proc = subprocess.run(["bash", os.path.join(root, "benchmarks", "gpu_check.sh"), "--dry-run", str(out)],
                          capture_output=True, text=True, cwd=root, timeout=120, env={**os.environ, "PYTHONPATH": REPO})
    return proc.returncode, (out / "dry-run.txt").read_text().splitlines()


def test_gpu_check_steps_start(tmp_path):
    status, lines = dry_run(REPO, tmp_path)
    with open(os.path.join(BENCHMARKS, "gpu_check.sh")) as f:
        steps = len(re.findall(r"^\s*(?:timeout \d+ )?python3 ", f.read(), re.M))  # a step per line; run() holds one
    assert status == 0 and not [line for line in lines if not line.startswith("ok ")], lines
    assert lines[0].startswith("ok pytest") and len(lines) >= steps


def test_gpu_check_dry_run_names_a_missing_option_and_file(tmp_path):
    root = tmp_path / "repo"
    (root / "benchmarks").mkdir(parents=True)
    shutil.copy(os.path.join(BENCHMARKS, "gpu_check.sh"), root / "benchmarks")
    (root / "benchmarks" / "embed_throughput.py").write_text(  # a script that lost its --jpeg option
        "import argparse\np = argparse.ArgumentParser()\n"
        "for o in ('--gpu', '--rows', '--small-rows', '--backbones'):\n    p.add_argument(o)\np.parse_args()\n")
    status, lines = dry_run(str(root), tmp_path)
    assert status == 1 and lines[0].startswith("FAIL pytest")  # its test files are not there
    assert sum(line.startswith("ok benchmarks/embed_throughput.py") for line in lines) == 2
    assert "FAIL benchmarks/embed_throughput.py: no option --jpeg" in lines
