"""No identifying DICOM attribute ever reaches the embeddings, the cache, results, predictions,
logs or the report — even when a site's manifest keys rows by accession number and patients by
their PatientID, as real exports do. Two truncated DICOMs are input errors; every cell completes."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pydicom
import yaml

IDENTIFYING = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "InstitutionName",
               "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "ReferringPhysicianName")


def _planted_identifiers(data: Path, table: pa.Table):
    found = set()
    for uri in table["uri"].to_pylist():
        ds = pydicom.dcmread(data / "chest" / uri, stop_before_pixels=True)
        for attr in IDENTIFYING:
            value = str(getattr(ds, attr, "") or "")
            if len(value) >= 6:
                found.add(value)
                found.update(p for p in value.split("^") if len(p) >= 6)
    return found


def test_no_identifier_anywhere_in_outputs_cache_or_logs(synthetic_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synthetic_data, data)
    table = pq.read_table(data / "chest" / "manifest.parquet")
    # the worst realistic manifest: ids straight from the DICOM headers
    headers = [pydicom.dcmread(data / "chest" / u, stop_before_pixels=True) for u in table["uri"].to_pylist()]
    table = table.set_column(table.column_names.index("sample_id"), "sample_id",
                             pa.array([str(h.AccessionNumber) for h in headers]))
    table = table.set_column(table.column_names.index("patient_id"), "patient_id",
                             pa.array([str(h.PatientID) for h in headers]))
    pq.write_table(table, data / "chest" / "manifest.parquet")
    identifiers = _planted_identifiers(data, table)
    assert len(identifiers) > 100
    for uri in table["uri"].to_pylist()[:2]:  # two truncated files
        path = data / "chest" / uri
        path.write_bytes(path.read_bytes()[:1000])

    cfg = {
        "backbones": [{"name": "tiny_vit", "weights": "random"}],
        "tasks": [{"name": "chest", "manifest": "${RADDIST_DEMO_DATA}/chest/manifest.parquet", "type": "multilabel",
                   "labels": ["opacity", "effusion"]}],
        "protocols": [{"name": "knn", "params": {"ks": [10]}}, {"name": "linear", "params": {"lrs": [0.01], "epochs": 3}}],
        "bootstrap": 20,
    }
    (tmp_path / "phi.yaml").write_text(yaml.safe_dump(cfg))
    out, cache = tmp_path / "out", tmp_path / "cache"
    proc = subprocess.run(
        [sys.executable, "-m", "raddist.cli", "demo", "--data", str(data), "--config", str(tmp_path / "phi.yaml"),
         "--output", str(out), "--cache", str(cache)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "RADDIST_SALT": "test-salt"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["input_errors"] >= 2 and summary["cells_done"] == summary["cells_total"] == 2
    page = (out / "report.html").read_text()  # the demo writes report.html too, and it is checked below
    assert page.startswith("<!DOCTYPE html>") and "data:image/png;base64," in page and 'id="board"' in page

    written = [p for root in (out, cache) for p in root.rglob("*") if p.is_file()]
    assert len(written) > 5
    logs = proc.stdout + proc.stderr
    for ident in identifiers:
        assert ident not in logs, f"{ident} in the logs"
        for path in written:
            assert ident.encode() not in path.read_bytes(), f"{ident} in {path}"
