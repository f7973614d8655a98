"""Every mistake a user makes in a config, a manifest or the storage is caught before Ray starts, and
reported as one line naming the field or the URI: input -> exit code -> the line expected.
The cases are the ones a hostile probe tried, where raddist used to print stack dumps."""

import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.helpers import SECRET


def base(synthetic_data, tmp_path):
    return {
        "backbones": [{"name": "tiny_vit", "weights": "random"}],
        "tasks": [{"name": "brain", "manifest": f"{synthetic_data}/brain_mri/manifest.parquet", "type": "multiclass",
                   "labels": ["label"], "classes": ["meningioma", "glioma", "pituitary"]}],
        "protocols": [{"name": "knn"}],
        "storage": {"output": str(tmp_path / "out"), "cache": str(tmp_path / "cache")},
    }


def malicious_pth(tmp_path):
    """A checkpoint whose unpickling would run a command: torch.load(weights_only=True) refuses it."""
    import pickle

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps(Exploit()))
    return str(path)


def escaping_manifest(synthetic_data, tmp_path):
    """A manifest whose relative uri climbs out of its directory."""
    table = pq.read_table(f"{synthetic_data}/brain_mri/manifest.parquet")
    uris = table["uri"].to_pylist()
    uris[3] = "../../etc/passwd"
    (tmp_path / "m").mkdir()
    pq.write_table(table.set_column(table.column_names.index("uri"), "uri", pa.array(uris)), tmp_path / "m" / "x.parquet")
    return str(tmp_path / "m" / "x.parquet")


CASES = {
    # name: (how to break the config, the line expected on stderr)
    "unknown key": (lambda c, d, t, s3: c["backbones"][0].update(wieghts="random"),
                    "backbones.0: unknown key(s) ['wieghts']"),
    "negative image size": (lambda c, d, t, s3: c.update(image_size=-5), "image_size: Input should be greater than or equal to 16"),
    "no seeds": (lambda c, d, t, s3: c.update(seeds=[]), "seeds: List should have at least 1 item"),
    "unset variable": (lambda c, d, t, s3: c["storage"].update(output="${RADDIST_UNSET_OUT_XYZ}/run"),
                       "storage.output: ${RADDIST_UNSET_OUT_XYZ} is not set in the environment"),
    "missing manifest": (lambda c, d, t, s3: c["tasks"][0].update(manifest=str(t / "nope.parquet")),
                         "manifest not found: "),
    "missing weights": (lambda c, d, t, s3: c["backbones"][0].update(weights=str(t / "missing.safetensors")),
                        "backbones.0.weights: "),
    "malicious checkpoint": (lambda c, d, t, s3: c["backbones"][0].update(weights=malicious_pth(t)),
                             "backbones.0.weights: "),
    "uri leaving the dataset": (lambda c, d, t, s3: c["tasks"][0].update(manifest=escaping_manifest(d, t)),
                                "row 3: its relative uri leaves the manifest's directory"),
    "missing output bucket": (lambda c, d, t, s3: c["storage"].update(output="s3://no-such-bucket-xyz/run"),
                              "s3://no-such-bucket-xyz/run"),
    "unreachable storage": (lambda c, d, t, s3: c["storage"].update(output="s3://runs/out"),
                            "cannot connect"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_mistake_is_one_line_before_ray_starts(case, synthetic_data, tmp_path, s3_bucket, moto_endpoint):
    config = base(synthetic_data, tmp_path)
    breaks, expected = CASES[case]
    breaks(config, synthetic_data, tmp_path, s3_bucket)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:1"}  # a run that started Ray would fail on this, loudly
    if case == "unreachable storage":
        env.update(AWS_ENDPOINT_URL="http://127.0.0.1:9", RADDIST_S3_ATTEMPTS="1")
    proc = subprocess.run([sys.executable, "-m", "raddist.cli", "run", str(tmp_path / "c.yaml")],
                          capture_output=True, text=True, env=env, timeout=300)
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("raddist: error: ") and expected in lines[0], lines
    assert "Traceback" not in proc.stderr and SECRET not in proc.stderr + proc.stdout
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "out" / "cells").exists()
