"""The commands that read a run's output, through the real CLI in its own process."""

import os
import subprocess
import sys

import pyarrow.parquet as pq


def _raddist(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "raddist.cli", *args], capture_output=True, text=True,
                          env=dict(os.environ), timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"raddist {args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def test_compare_prints_paired_differences_with_p_values(tmp_path):
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(0)
    n = 120
    labels = rng.integers(0, 2, size=n)
    rows = []
    for backbone, noise in (("good", 0.3), ("bad", 3.0)):
        scores = 1 / (1 + np.exp(-(labels * 2 - 1 + rng.normal(0, noise, size=n))))
        for i in range(n):
            rows.append({"cell_id": backbone, "task": "t", "task_type": "binary", "backbone": backbone,
                         "protocol": "linear", "params": "{}", "seed": 0, "sample_id": f"s{i}",
                         "patient_id": f"p{i // 2}", "labels": [int(labels[i])], "scores": [float(scores[i])]})
    out = tmp_path / "out"
    out.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), out / "predictions.parquet")
    proc = _raddist("compare", str(out), "--a", "good", "--b", "bad", "--bootstrap", "300")
    lines = [line.split() for line in proc.stdout.splitlines()]
    header = lines[0]
    auroc = next(r for r in lines[1:] if r[header.index("metric")] == "auroc")
    assert float(auroc[header.index("diff")]) > 0.2
    assert float(auroc[header.index("p_value")]) < 0.01
    missing = _raddist("compare", str(out), "--a", "good", "--b", "nope", check=False)
    assert missing.returncode == 2 and "nope" in missing.stderr
