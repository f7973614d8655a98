"""`ray job submit` against a real local head with Ray's token authentication on, as on the cluster:
stop a sweep midway, resubmit, and get exactly the results of an uninterrupted run, having run only
the cells that were missing; and the RayJob's own command, run twice by two drivers that share
nothing but S3 (a new head each time: a fresh home directory), resumes instead of being refused."""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import boto3
import pyarrow.parquet as pq
import pytest
import yaml

from tests.fake_cluster import stop_cluster

REPO = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).parent / "ray")
RAYJOB = REPO / "jobs" / "kuberay" / "rayjob.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray(env, *args, check=True, timeout=600, cwd=REPO):
    proc = subprocess.run([RAY, *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"ray {args[:2]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def head(tmp_path_factory, moto_endpoint):
    """A head as KubeRay's authOptions make it: RAY_AUTH_MODE=token and the token in RAY_AUTH_TOKEN
    on every Ray process and on the CLI; S3 (moto) in its environment, as IRSA gives pods."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_USAGE_STATS_ENABLED": "0", "AWS_ENDPOINT_URL": moto_endpoint, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    for var in ("RAY_AUTH_TOKEN_PATH", "RADDIST_SALT", "RADDIST_SALT_FILE", "AWS_ENDPOINT_URL_S3"):
        env.pop(var, None)
    dash = _free_port()
    temp_dir = str(tmp_path_factory.mktemp("ray"))
    _ray(env, "start", "--head", "--node-ip-address=127.0.0.1", "--port=0", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={_free_port()}", "--num-cpus=2",
         "--disable-usage-stats", f"--temp-dir={temp_dir}")
    address = f"http://127.0.0.1:{dash}"
    for _ in range(60):  # the job agent comes up a little after the head
        if _ray(env, "job", "list", "--address", address, check=False).returncode == 0:
            break
        time.sleep(1)
    no_token = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"}
    refused = _ray(no_token, "job", "list", "--address", address, check=False)
    assert refused.returncode != 0, "the head answered a client without its token"
    yield SimpleNamespace(address=address, env=env, s3=moto_endpoint)
    stop_cluster(temp_dir)  # this head only: `ray stop` would stop every Ray on the machine


def _submit(head, out, data, cache, wait=True):
    args = ["job", "submit", "--address", head.address, "--working-dir", "."] + ([] if wait else ["--no-wait"])
    proc = _ray(head.env, *args, "--", sys.executable, "jobs/sweep.py", "smoke", "--synthetic", str(data),
                "--output", str(out), "--cache", str(cache))
    return proc.stdout + proc.stderr


def _done_cells(out: Path) -> int:
    return len(list(out.glob("cells/*/cell.json")))


def test_stop_midway_then_resubmit_runs_only_the_rest(head, tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache"
    full, resumed = tmp_path / "full", tmp_path / "resumed"

    _submit(head, full, data, cache)
    total = json.loads((full / "summary.json").read_text())["cells_total"]
    assert json.loads((full / "summary.json").read_text())["cells_done"] == total >= 10

    text = _submit(head, resumed, data, cache, wait=False)
    job_id = next(w for w in text.split() if w.startswith("'raysubmit_") or w.startswith("raysubmit_")).strip("'")
    deadline = time.time() + 300
    while _done_cells(resumed) < 2 and time.time() < deadline:
        time.sleep(0.2)
    _ray(head.env, "job", "stop", "--address", head.address, job_id)
    before = _done_cells(resumed)
    assert 2 <= before < total, f"stopped with {before} of {total} cells done"
    if (resumed / "summary.json").exists():  # a run stopped by SIGTERM ends cleanly, and says so
        stopped = json.loads((resumed / "summary.json").read_text())
        assert stopped["state"] == "interrupted" and stopped["cells_done"] < total

    _submit(head, resumed, data, cache)
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["cells_run_now"] == total - before
    assert summary["cells_done"] == total and summary["embedding_jobs_computed"] == 0

    def table(out):
        df = pq.read_table(out / "results.parquet").to_pandas()
        return df.sort_values(["cell_id", "metric"]).reset_index(drop=True)[["cell_id", "metric", "value", "ci_low", "ci_high"]]

    a, b = table(full), table(resumed)
    assert list(a.cell_id) == list(b.cell_id)
    assert (a.value.fillna(-1) == b.value.fillna(-1)).all() and (a.ci_low.fillna(-1) == b.ci_low.fillna(-1)).all()

    _submit(head, resumed, data, cache)  # a finished sweep resubmitted does nothing
    assert json.loads((resumed / "summary.json").read_text())["cells_run_now"] == 0


def _rayjob_command(bucket: str, data: Path):
    """jobs/kuberay/rayjob.yaml's entrypoint and runtime env, with this test's bucket, and the smoke
    config on synthetic data for the paper grid."""
    docs = [d for d in yaml.safe_load_all(RAYJOB.read_text()) if d]
    (spec,) = [d["spec"] for d in docs if d.get("kind") == "RayJob"]
    entrypoint = spec["entrypoint"].replace("s3://my-bucket", f"s3://{bucket}").split()
    assert entrypoint[:3] == ["python", "jobs/sweep.py", "paper"]
    command = [sys.executable, entrypoint[1], "smoke", *entrypoint[3:], "--synthetic", str(data)]
    env_vars = yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
    return command, {k: v.replace("s3://my-bucket", f"s3://{bucket}") for k, v in env_vars.items()}


def test_the_rayjob_applied_again_resumes_on_a_new_head(head, tmp_path):
    client = boto3.client("s3", endpoint_url=head.s3, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    bucket = "raddist-rayjob"
    client.create_bucket(Bucket=bucket)
    command, env_vars = _rayjob_command(bucket, tmp_path / "data")
    # the image's code: one copy for both clusters (what --working-dir uploads, frozen)
    image = tmp_path / "image"
    shutil.copytree(REPO, image, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info",
                                                              ".pytest_cache", "raddist-output", "raddist-demo", "build"))
    salt_key = env_vars["RADDIST_SALT_FILE"].split(f"s3://{bucket}/", 1)[1]
    output = command[command.index("--output") + 1].split(f"s3://{bucket}/", 1)[1]

    def apply(name, **env):  # one driver on a head that has never seen this run: its own home
        home = tmp_path / name
        home.mkdir()
        runtime_env = {"env_vars": {**env_vars, "HOME": str(home), **env}}
        runtime_env["env_vars"] = {k: v for k, v in runtime_env["env_vars"].items() if v is not None}
        proc = _ray(head.env, "job", "submit", "--address", head.address, "--working-dir", ".",
                    "--runtime-env-json", json.dumps(runtime_env), "--", *command, check=False, cwd=image)
        summary = json.loads(client.get_object(Bucket=bucket, Key=f"{output}/summary.json")["Body"].read())
        return proc, summary, home

    first, summary, home = apply("head-1")
    assert first.returncode == 0, first.stdout[-3000:]
    total = summary["cells_total"]
    assert summary["cells_done"] == summary["cells_run_now"] == total >= 10 and summary["embedding_jobs_computed"] > 0
    salt = client.get_object(Bucket=bucket, Key=salt_key)["Body"].read().decode()
    assert len(salt) == 32 and not (home / ".config" / "raddist" / "salt").exists()

    second, resumed, home = apply("head-2")
    assert second.returncode == 0, second.stdout[-3000:]
    assert resumed["cells_done"] == total and resumed["cells_run_now"] == 0, second.stdout[-3000:]
    assert resumed["embedding_jobs_computed"] == 0 and resumed["embedding_jobs_cached"] > 0
    assert client.get_object(Bucket=bucket, Key=salt_key)["Body"].read().decode() == salt  # the same salt
    assert not (home / ".config" / "raddist" / "salt").exists()

    # what the RayJob did before RADDIST_SALT_FILE: the new head's own salt, refused before any cell
    third, summary, home = apply("head-3", RADDIST_SALT_FILE=None)
    assert third.returncode != 0 and "written with another salt" in third.stdout + third.stderr
    assert summary == resumed and (home / ".config" / "raddist" / "salt").exists()  # nothing ran
