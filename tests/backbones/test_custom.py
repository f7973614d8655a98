"""A team's own backbone by `python:<module>:<callable>`: its declared contract, prefix tokens kept out of
the patch features, and a whole sweep through it on a local Ray cluster."""

import json

import pyarrow.parquet as pq
import torch

from raddist.backbones.embedder import Embedder
from raddist.backbones.registry import get_config
from raddist.backbones.weights import build_model
from raddist.spec import parse
from raddist.sweep import run_sweep

OWN = "python:tests.backbones.own_model:small_vit"


def test_own_model_features_follow_its_contract():
    config = get_config(OWN)
    assert (config.input_size, config.mean, config.std, config.patch_size) == (32, (0.5,) * 3, (0.25,) * 3, 8)
    model = build_model(config, "random")
    images = torch.randint(0, 256, (2, 32, 32), dtype=torch.uint8)
    embedder = Embedder(config, model, n_last_blocks=2, patch_tokens=2)
    out = embedder(images)
    with torch.no_grad():
        blocks = model.model(embedder.normalize(images))
        last = model.model.norm(blocks[-1])
    assert out["cls"].shape == (2, 64) and out["patch_tokens"].shape == (2, 32, 4, 4)
    assert torch.allclose(out["cls"][:, 32:], last[:, 0], atol=1e-5)  # class token: prefix 0, normed
    assert torch.allclose(out["patch_tokens"].flatten(2).transpose(1, 2), last[:, 3:], atol=1e-5)  # no registers
    assert torch.equal(build_model(config, "random").model.prefix, model.model.prefix)  # seeded init


def test_own_model_runs_through_a_sweep(ray_local, synthetic_data, tmp_path):
    spec = parse({
        "backbones": [{"name": OWN, "weights": "random", "alias": "ours"}],
        "tasks": [{"name": "brain", "manifest": f"{synthetic_data}/brain_mri/manifest.parquet", "type": "multiclass",
                   "labels": ["label"], "classes": ["meningioma", "glioma", "pituitary"]}],
        "protocols": [{"name": "knn", "params": {"ks": [5]}}, {"name": "logreg", "params": {"cs": [1.0]}}],
        "seeds": [0], "bootstrap": 10,
        "storage": {"output": str(tmp_path / "out"), "cache": str(tmp_path / "cache")}})
    summary = run_sweep(spec, say=lambda line: None)
    assert summary["cells_total"] == summary["cells_done"] == 2 and summary["cells_failed"] == 0
    results = pq.read_table(tmp_path / "out" / "results.parquet").to_pandas()
    assert set(results["backbone"]) == {"ours"}
    accuracy = results[results["metric"] == "accuracy"]["value"]
    assert len(accuracy) == 2 and accuracy.between(0, 1).all()
    record = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert record["backbones"]["ours"] == {"weights": "random", "name": OWN, "license": "proprietary (our hospital)",
                                           "gated": False}
    report = (tmp_path / "out" / "report.md").read_text()
    assert f"| ours | {OWN} | proprietary (our hospital) | no | `random` |" in report
