"""`raddist check`: every (backbone, image size) of a plan built and run once, without Ray."""

import json

import yaml

from raddist import check as check_lib
from raddist.cli import main
from raddist.plan import make_plan
from raddist.spec import load


def test_probes_cover_every_backbone_and_size_of_the_paper_plan():
    plan = make_plan(load("paper"))
    probes = check_lib.probes(plan)
    planned = {(j.backbone.label, j.contract["size"]) for j in plan.jobs.values()}
    assert {(p.backbone.label, p.size) for p in probes} == planned
    assert len(probes) == 28  # 13 backbones at 224 and 448, SAM at 1024 (classification) and 448
    by_key = {(p.backbone.label, p.size): p for p in probes}
    # the features the jobs cache: 4 blocks and the mean patch token; segmentation's 5 blocks of tokens
    assert (by_key["dinov2_vitg14", 224].n_last_blocks, by_key["dinov2_vitg14", 224].patch_mean) == (4, True)
    assert by_key["dinov2_vitg14", 448].patch_tokens == 5
    # the trainable protocols of the plan, with the task they train on
    assert sorted(by_key["dinov2_vitg14", 224].trainable) == ["bitfit", "finetune", "lora"]
    assert by_key["dinov2_vitg14", 448].trainable == {}
    assert by_key["sam_vitl16", 1024].trainable == {} and by_key["sam_vitl16", 1024].patch_tokens == 0


def test_check_runs_the_demo_for_real_and_prints_json(capsys):
    """The tiny backbones on the CPU: a real forward of a random image through BatchedForward, and one
    optimiser step of each trainable protocol."""
    rc = main(["check", "demo", "--weights", "random", "--device", "cpu", "--json"])
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert rc == 0
    assert [(r["backbone"], r["image_size"], r["ok"], r["device"]) for r in rows] == [
        ("tiny_vit", 64, True, "cpu"), ("tiny_cnn", 64, True, "cpu")]
    vit, cnn = rows
    assert (vit["patch_size"], vit["patch_grid"], vit["error"]) == (8, [8, 8], "")
    assert vit["features"]["cls"] == [2, 4 * 64] and vit["features"]["patch_tokens"] == [2, 64, 8, 8]
    assert sorted(vit["trained"]) == ["finetune", "lora"]
    assert cnn["patch_size"] is None and cnn["features"]["patch_tokens"] == [2, 96, 2, 2]
    assert set(rows[0]) >= {"backbone", "image_size", "ok", "error", "patch_size", "patch_grid", "features", "seconds"}
    assert all(r["seconds"] > 0 for r in rows)


def test_check_fails_a_size_the_patch_does_not_divide(tmp_path, capsys):
    """A row fails in one line naming the size and the patch; the command exits non-zero (meta device)."""
    config = yaml.safe_load(_demo_path().read_text())
    config["image_size"] = 60
    config["backbones"] = [{"name": "tiny_vit", "weights": "random"}]
    path = tmp_path / "odd.yaml"
    path.write_text(yaml.safe_dump(config))
    rc = main(["check", str(path), "--weights", "random"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "image size 60 is not a multiple of tiny_vit's patch size 8 (use 56 or 64)" in out
    assert out.strip().splitlines()[-1] == "0/1 (backbone, image size) ok; failed: tiny_vit@60"


def _demo_path():
    from pathlib import Path

    import raddist

    return Path(raddist.__file__).parent / "configs" / "demo.yaml"


def test_a_backbone_that_cannot_be_built_fails_each_of_its_rows_in_one_line(tmp_path, capsys):
    """Configured weights (no --weights): a missing file fails the backbone's rows; the others still run."""
    config = yaml.safe_load(_demo_path().read_text())
    missing = str(tmp_path / "absent.safetensors")
    config["backbones"] = [{"name": "tiny_vit", "weights": missing}, {"name": "tiny_cnn", "weights": "random"}]
    config["protocols"] = [p for p in config["protocols"] if p["name"] in ("knn", "linear")]
    path = tmp_path / "missing.yaml"
    path.write_text(yaml.safe_dump(config))
    rc = main(["check", str(path), "--device", "cpu", "--json"])
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert rc == 1
    assert [(r["backbone"], r["ok"]) for r in rows] == [("tiny_vit", False), ("tiny_cnn", True)]
    assert rows[0]["error"] == f"FileNotFoundError: weights file not found: {missing}"
    assert rows[0]["features"] == {} and rows[0]["weights"] == missing
