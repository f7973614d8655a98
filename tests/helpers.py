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


def package_modules(package) -> dict:
    """{dotted name: file} of the modules directly in a package (its __init__ excluded), found on
    disk, so that a registry test sees a module its package forgot to import."""
    root = os.path.dirname(package.__file__)
    return {f"{package.__name__}.{name[:-3]}": os.path.join(root, name)
            for name in sorted(os.listdir(root)) if name.endswith(".py") and name != "__init__.py"}


def calls_to(path: str, function: str) -> int:
    """How many times the source at path calls `function` (as a name or an attribute), decorators included."""
    import ast

    with open(path) as f:
        tree = ast.parse(f.read())
    return sum(isinstance(node, ast.Call) and function in (getattr(node.func, "id", None), getattr(node.func, "attr", None))
               for node in ast.walk(tree))
