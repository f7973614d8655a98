"""A user's first hour (issue 29): what a new user plausibly does, as a table. Each case runs the real
CLI (raddist.cli.main in this process; Ray must not start for a mistake: RAY_ADDRESS points nowhere),
and asserts its exit code, at most two console lines for an error (the line naming the field or the
path, and for a store, the "checking …" line before it), and no stale or wrong output.

The cases that read a run share one real run of a tiny config (a subprocess with its own local Ray):
seeds 0 and 1 of a deterministic protocol, and a task whose test split has no pituitary positive."""

import json
import os
import shutil
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from raddist.cli import main

CLASSES = ["meningioma", "glioma", "pituitary"]


def config(data, tmp, **changes):
    cfg = {
        "name": "first-hour",
        "backbones": [{"name": "tiny_vit", "weights": "random"}],
        "tasks": [{"name": "brain", "manifest": f"{data}/brain_mri/manifest.parquet", "type": "multiclass",
                   "labels": ["label"], "classes": CLASSES}],
        "protocols": [{"name": "knn"}],
        "bootstrap": 20,
        "storage": {"output": str(tmp / "out"), "cache": str(tmp / "cache")},
    }
    for key, value in changes.items():
        value(cfg) if callable(value) else cfg.__setitem__(key, value)
    path = tmp / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def manifest_with(data, tmp, change) -> str:
    table = pq.read_table(f"{data}/brain_mri/manifest.parquet")
    rows = table.to_pylist()
    change(rows)
    out = tmp / "m"
    out.mkdir(exist_ok=True)
    for r in rows:  # the copy lives elsewhere: its uris point at the original's images
        r["uri"] = os.path.join(data, "brain_mri", r["uri"]) if not os.path.isabs(r["uri"]) else r["uri"]
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), out / "manifest.parquet")
    return str(out / "manifest.parquet")


def blank_patient(value):
    def change(rows):
        rows[5]["patient_id"] = value
    return change


def no_test_pituitary(rows):
    rows[:] = [r for r in rows if not (r["split"] == "test" and r["label"] == 2)]


def two_backbones_apart(tmp) -> str:
    """predictions.parquet of two backbones that share no task."""
    rows = [{"cell_id": b, "task": task, "task_type": "binary", "backbone": b, "protocol": "linear", "params": "{}",
             "seed": 0, "sample_id": f"s{i}", "patient_id": f"p{i}", "labels": [i % 2], "scores": [0.1 * (i % 10)]}
            for b, task in (("a", "chest"), ("b", "brain")) for i in range(20)]
    (tmp / "apart").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp / "apart" / "predictions.parquet")
    return str(tmp / "apart")


def copy_run(run, tmp, drop, progress_state=None) -> str:
    out = tmp / "copy"
    shutil.copytree(run, out)
    for name in drop:
        (out / name).unlink()
    if progress_state:
        progress = json.loads((out / "progress.json").read_text())
        (out / "progress.json").write_text(json.dumps({**progress, "state": progress_state, "updated": time.time()}))
    return str(out)


def hub_unreachable(monkeypatch, tmp):
    import huggingface_hub as hf

    monkeypatch.setattr(hf.constants, "HF_HUB_CACHE", str(tmp / "empty-hub-cache"))
    monkeypatch.setattr(hf.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf.constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        "http://127.0.0.1:9/{repo_id}/resolve/{revision}/{filename}")


def backbone(name=None, weights=None):
    def change(cfg):
        cfg["backbones"][0].update({k: v for k, v in (("name", name), ("weights", weights)) if v})
    return change


# name: (argv from (data, tmp, run), exit code, what the output must say, what it must not, patch)
# An error's line is on stderr; a command's output on stdout. run is the shared run (None: not needed).
D, T = "{DATA}", "{TMP}"
CASES = {
    "seed listed twice": (lambda d, t, r: ["run", config(d, t, seeds=[0, 0])], 2,
                          "seeds.1: duplicates seeds.0 (0)", None, None),
    "protocol listed twice": (lambda d, t, r: ["run", config(d, t, protocols=[{"name": "knn"}, {"name": "knn"}])], 2,
                              "protocols.1: duplicates protocols.0 ('knn' with the same params)", None, None),
    "backbone listed twice": (lambda d, t, r: ["run", config(d, t, b=lambda c: c["backbones"].append(
        dict(c["backbones"][0])))], 2, "backbones.1: duplicates backbones.0 ('tiny_vit')", None, None),
    "task listed twice": (lambda d, t, r: ["run", config(d, t, t=lambda c: c["tasks"].append(dict(c["tasks"][0])))],
                          2, "tasks.1: duplicates tasks.0 ('brain')", None, None),
    "empty patient_id": (lambda d, t, r: ["run", config(d, t, m=lambda c: c["tasks"][0].update(
        manifest=manifest_with(d, t, blank_patient(""))))], 2, "row 5 has an empty patient_id", None, None),
    "null patient_id": (lambda d, t, r: ["run", config(d, t, m=lambda c: c["tasks"][0].update(
        manifest=manifest_with(d, t, blank_patient(None))))], 2, "row 5 has an empty patient_id", None, None),
    "tracking store refuses": (lambda d, t, r: ["run", config(d, t, tracking={"mlflow": "http://127.0.0.1:9"})], 2,
                               "tracking.mlflow: http://127.0.0.1:9 cannot be reached (Connection refused)", None,
                               None),
    "hub weights, no network, no cache": (lambda d, t, r: ["run", config(d, t, w=backbone(weights="hub"))], 2,
                                          "hub weights of tiny_vit (timm/test_vit.r160_in1k) are not in the local "
                                          "cache", None, hub_unreachable),
    "output is a file": (lambda d, t, r: ["run", config(d, t), "--output", str(_file(t))], 2,
                         "storage.output: ", "Traceback", None),
    "cache under a file": (lambda d, t, r: ["run", config(d, t), "--cache", str(_file(t) / "cache")], 2,
                           "storage.cache: ", "Traceback", None),
    "status of no run": (lambda d, t, r: ["status", d], 2, f"not a raddist run: {D}", None, None),
    "errors of no run": (lambda d, t, r: ["errors", d], 2, f"not a raddist run: {D}", None, None),
    "report of no run": (lambda d, t, r: ["report", str(t / "nothing")], 2, f"not a raddist run: {T}/nothing", None,
                         None),
    "compare of no run": (lambda d, t, r: ["compare", d, "--a", "x", "--b", "y"], 2, f"not a raddist run: {D}", None,
                          None),
    "compare X with X": (lambda d, t, r: ["compare", r, "--a", "tiny_vit", "--b", "tiny_vit"], 2,
                         "--a and --b are both 'tiny_vit'", None, None),
    "compare, nothing in common": (lambda d, t, r: ["compare", two_backbones_apart(t), "--a", "a", "--b", "b"], 2,
                                   "'a' and 'b' have nothing in common to compare", None, None),
    "--debug after the subcommand": (lambda d, t, r: ["plan", config(d, t), "--debug"], 0, "1 cells, 1 embedding jobs", None,
                                     None),
    "unknown backbone": (lambda d, t, r: ["plan", config(d, t, w=backbone(name="tiny_vitt"))], 2,
                         "unknown backbone 'tiny_vitt'; did you mean 'tiny_vit'?", "dinov2_vitg14", None),
    "unknown protocol": (lambda d, t, r: ["plan", config(d, t, protocols=[{"name": "knnn"}])], 2,
                         "unknown protocol 'knnn'; did you mean 'knn' or 'mlknn'?", "bitfit", None),
    "unknown dataset": (lambda d, t, r: ["plan", config(d, t, x=lambda c: c["tasks"][0].update(dataset="chexpret"))],
                        2, "unknown dataset 'chexpret'; did you mean 'chexpert'?", "montgomery", None),
    "unknown config": (lambda d, t, r: ["plan", "demp"], 2, "config not found: demp; did you mean 'demo'?", "paper",
                       None),
    "report of a run in flight": (lambda d, t, r: ["report", copy_run(r, t, ["summary.json", "report.md"], "running")],
                                  0, "Run in flight (progress.json: running", "## Cost", None),
    "report of a run that stopped": (lambda d, t, r: ["report", copy_run(r, t, ["summary.json", "report.md",
                                                                                "progress.json"])],
                                     0, "This run stopped before writing its report", None, None),
    "a class with no test positives": (lambda d, t, r: ["report", r], 0,
                                       "## nopit — auroc (macro over 2 of 3 classes)", None, None),
    "seeds of a deterministic protocol": (lambda d, t, r: ["report", r], 0, "(n=2, identical)", "± 0.000", None),
}
NEEDS_RUN = {"compare X with X", "report of a run in flight", "report of a run that stopped",
             "a class with no test positives", "seeds of a deterministic protocol"}


def _file(tmp):
    path = tmp / "a-file"
    path.write_text("not a directory")
    return path


@pytest.fixture(scope="module")
def shared_run(synthetic_data, tmp_path_factory):
    """One real run: brain with seeds 0 and 1 (kNN is deterministic), and nopit, whose test split has no
    pituitary case. Returns the output and the run's console."""
    tmp = tmp_path_factory.mktemp("first-hour-run")
    nopit = manifest_with(synthetic_data, tmp, no_test_pituitary)
    path = config(synthetic_data, tmp, seeds=[0, 1], t=lambda c: c["tasks"].append(
        {**c["tasks"][0], "name": "nopit", "manifest": nopit}))
    proc = subprocess.run([sys.executable, "-m", "raddist.cli", "run", path], capture_output=True, text=True,
                          timeout=900, env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return str(tmp / "out"), proc


@pytest.mark.parametrize("case", list(CASES))
def test_first_hour(case, synthetic_data, tmp_path, capsys, monkeypatch, request):
    argv, code, says, never, patch = CASES[case]
    run = request.getfixturevalue("shared_run")[0] if case in NEEDS_RUN else None
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # a mistake that started Ray would fail on this, loudly
    if patch:
        patch(monkeypatch, tmp_path)
    args = argv(synthetic_data, tmp_path, run)
    capsys.readouterr()
    started = time.monotonic()
    assert main(args) == code
    seconds = time.monotonic() - started
    out, err = capsys.readouterr()
    says = says.replace(D, synthetic_data).replace(T, str(tmp_path))
    if code == 2:
        lines = [ln for ln in (out + err).splitlines() if ln.strip()]
        assert len(lines) <= 2 and err.startswith("raddist: error: ") and says in err, (out, err)
        assert seconds < 120, f"{case}: {seconds:.0f} s before the error"  # was 252 s for a refused store
        assert not (tmp_path / "out" / "cells").exists()  # nothing ran
    else:
        assert says in out, out[-3000:]
    if never:
        assert never not in out + err


def test_the_shared_run_says_the_right_things(shared_run):
    """Its console holds raddist's lines only (Ray's token-auth notice and core_worker.cc lines are in
    its logs); its report keeps the CI of identical seeds and names the classes its macro AUROC covers."""
    output, proc = shared_run
    assert "core_worker.cc" not in proc.stderr and "Token authentication" not in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    report = open(os.path.join(output, "report.md")).read()
    assert "Macro AUROC covers meningioma, glioma: pituitary has no test positives" in report
    brain = report.split("## brain — auroc")[1].split("##")[0]
    assert "(n=2, identical)" in brain and "[" in brain and "± 0.000" not in brain
    results = pq.read_table(os.path.join(output, "results.parquet")).to_pandas()
    nopit = results[(results.task == "nopit") & results.metric.str.startswith("auroc")]
    assert nopit[nopit.metric == "auroc/pituitary"].value.isna().all()
    for seed, rows in nopit.groupby("seed"):  # the headline is the mean of the two defined classes
        per = rows.set_index("metric").value
        assert per["auroc"] == pytest.approx((per["auroc/meningioma"] + per["auroc/glioma"]) / 2, abs=1e-12)


def test_a_failed_write_names_the_path_and_the_os_error_and_leaves_no_tmp(tmp_path):
    """A full disk (a file-size limit stands in for it) and a parent that is a file: one StorageError
    naming the path and the OS's words; no .tmp part left beside it."""
    code = f"""
import resource, signal
from raddist import storage
from raddist.errors import StorageError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
for uri in ({str(tmp_path / 'full' / 'x.parquet')!r}, {str(tmp_path / 'a-file' / 'x.json')!r}):
    try:
        storage.write_bytes(uri, b"0" * 100000)
    except StorageError as e:
        print(e)
"""
    (tmp_path / "a-file").write_text("x")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2, proc.stdout + proc.stderr
    assert lines[0].startswith(f"{tmp_path / 'full' / 'x.parquet'}: ") and "File too large" in lines[0]
    assert lines[1].startswith(f"{tmp_path / 'a-file' / 'x.json'}: ")
    assert os.listdir(tmp_path / "full") == []
