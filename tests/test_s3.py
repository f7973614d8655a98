"""A whole sweep on object storage: manifest, images, cache and results all on s3:// (a real S3
HTTP endpoint, moto, on loopback). Credentials come from the environment and are written nowhere:
not in the outputs, the cache, the console, nor any byte of Ray's session directory (its logs and
the runtime environments Ray Tune would otherwise copy them into)."""

import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import yaml

from tests.helpers import SECRET


def _upload_dir(client, bucket, local: Path, prefix: str):
    for path in local.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(local)}")


def test_sweep_entirely_on_s3(synthetic_data, s3_bucket, moto_endpoint, tmp_path):
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    _upload_dir(client, s3_bucket, Path(synthetic_data), "data")
    # the manifest's relative uris resolve against its s3:// directory
    cfg = {
        "backbones": [{"name": "tiny_vit", "weights": "random"}],
        "tasks": [{"name": "brain", "manifest": f"s3://{s3_bucket}/data/brain_mri/manifest.parquet",
                   "type": "multiclass", "labels": ["label"], "classes": ["a", "b", "c"]}],
        "protocols": [{"name": "knn", "params": {"ks": [10]}}, {"name": "logreg", "params": {"cs": [1.0]}}],
        "bootstrap": 20,
        "storage": {"cache": f"s3://{s3_bucket}/cache", "output": f"s3://{s3_bucket}/out"},
    }
    (tmp_path / "s3.yaml").write_text(yaml.safe_dump(cfg))
    ray_dir = Path(tempfile.mkdtemp(prefix="rs3-", dir="/tmp"))  # this run's Ray sessions (short: socket paths)
    proc = subprocess.run([sys.executable, "-m", "raddist.cli", "run", str(tmp_path / "s3.yaml")],
                          capture_output=True, text=True, env={**os.environ, "RAY_TMPDIR": str(ray_dir)}, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    def get(key):
        return client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()

    summary = json.loads(get("out/summary.json"))
    assert summary["cells_done"] == summary["cells_total"] == 2 and summary["embedding_jobs_computed"] == 1
    results = pq.read_table(io.BytesIO(get("out/results.parquet"))).to_pandas()
    assert (results[results.metric == "auroc"].value > 0.5).all()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert any(k.startswith("cache/") and k.endswith("meta.json") for k in keys)
    assert not any(k.startswith("out/") and ".tmp-" in k for k in keys)

    # the credential is nowhere: not in the console, not in anything written, not in Ray's session
    assert SECRET not in proc.stdout + proc.stderr
    searched = 0
    for key in keys:
        if key.startswith(("out/", "cache/")):
            assert SECRET.encode() not in get(key), key
            searched += 1
    session_files = [p for p in ray_dir.rglob("*") if p.is_file() and not p.is_symlink()]
    assert any(p.name == "runtime_env_agent.log" for p in session_files)  # the log that held it before
    leaked = [str(p) for p in session_files if SECRET.encode() in p.read_bytes()]
    assert leaked == [] and searched > 10 and len(session_files) > 20
