"""What more than one test module uses: constants and small data builders. Fixtures live in
conftest.py; a test module imports helpers from here (or its package's helper module), never from
another test module."""

from __future__ import annotations

import os

import numpy as np

SECRET = "raddist-test-secret-Zq8w"  # a credential that must never appear in any output or log


def binary_data(n=400, seed=0, signal_a=1.0, signal_b=1.0, ties=False):
    """(labels, scores of model a, scores of model b) on n binary cases, 30% positive; the two models'
    scores share noise (paired, as two backbones on one test set); ties: scores rounded."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    noise = rng.normal(size=n)
    a = signal_a * y + noise
    b = signal_b * y + 0.6 * noise + 0.8 * rng.normal(size=n)
    if ties:
        a, b = np.round(a, 0), np.round(b, 1)
    return y, a, b


def copied_manifest(synthetic_data: str, tmp_path, copies=48):
    """(uri, rows) of a manifest of the synthetic brain_mri rows repeated `copies` times under new
    sample and patient ids: a job large enough to outlast an actor kill or a lease expiry."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raddist.data import manifest as manifest_lib

    base = manifest_lib.load(os.path.join(synthetic_data, "brain_mri", "manifest.parquet"))
    rows = []
    for c in range(copies):
        for r in base.select(["sample_id", "uri", "patient_id", "split", "label"]).to_pylist():
            rows.append({**r, "sample_id": f"{r['sample_id']}-{c}", "patient_id": f"{r['patient_id']}-{c}"})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "manifest.parquet")
    return str(tmp_path / "manifest.parquet"), len(rows)
