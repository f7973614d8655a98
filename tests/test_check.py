"""`raddist check`: every (backbone, image size) of a plan built and run once, without Ray."""

import json

import yaml

from raddist import check as check_lib
from raddist.cli import main
from raddist.plan import make_plan
from raddist.config import load


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
    out = capsys.readouterr().out
    rows = json.loads(out)["rows"]
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
    training = json.loads(out)["training"]  # finetune and lora of tiny_vit: batch 32 in one micro-batch
    assert [(t["backbone"], t["protocol"], t["micro_batch"], t["accumulation_steps"], t["node"], t["ok"])
            for t in training] == [("tiny_vit", "finetune", 32, 1, "gpu_a10g", True),
                                   ("tiny_vit", "lora", 32, 1, "gpu_a10g", True),
                                   ("tiny_vit", "lora", 32, 1, "gpu_a10g", True)]  # and lora's search entry


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
    assert out.strip().splitlines()[-1] == ("0/1 (backbone, image size) ok; failed: tiny_vit@60; 0/3 trainable "
                                            "cells placed; not placed: tiny_vit finetune@60, tiny_vit lora@60, "
                                            "tiny_vit lora@60")  # lora: the plain and the search entry
    assert "train  FAILED  AssertionError: Input height (60) should be divisible by patch size (8)." in out


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


def test_every_trainable_cell_of_the_paper_fits_its_node_type():
    """Issue 28: the estimate and the placement of each distinct trainable cell of the paper grid (5 ViTs x
    finetune/lora/bitfit at batch 128, 224 px), from the architectures on the meta device."""
    from raddist.protocols.trainable.memory import MIN_MICRO_BATCH

    rows = check_lib.training(make_plan(load("paper")))
    assert len(rows) == 15 and all(t.ok for t in rows), [t.estimate for t in rows if not t.ok]
    for t in rows:
        assert 0 < t.estimate_gib <= t.node_gib and t.image_size == 224 and t.params["batch_size"] == 128
        assert t.micro_batch >= MIN_MICRO_BATCH and t.micro_batch * t.accumulation_steps >= 128
        assert t.estimate.startswith(f"{t.backbone} {t.protocol} @224px") and f"on {t.node}" in t.estimate
    by_key = {(t.backbone, t.protocol): t for t in rows}
    assert {b for b, _ in by_key} == {"dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14", "dinov2_vitg14",
                                      "vit_large_in21k"}
    assert by_key["dinov2_vits14", "bitfit"].accumulation_steps == 1  # ViT-S: the whole batch at once
    # ViT-g fine-tuning: 17 GiB of states leave a 22.5 GiB card room for 8 images only if checkpointed
    assert by_key["dinov2_vitg14", "finetune"].checkpointing and not by_key["dinov2_vitg14", "lora"].checkpointing
    # with the large-GPU resource set, the large backbones' workers ask for it: placed on the large type only
    large = check_lib.training(make_plan(load("paper", {"resources.large_gpu_resource": "large_gpu"})))
    assert {(t.backbone, t.node) for t in large if t.ok} == {
        (b, "gpu_a100x8" if b == "dinov2_vitg14" else "gpu_a10g") for b, _ in by_key}


def test_a_trainable_cell_no_node_type_holds_fails_the_check(tmp_path, capsys):
    """tiny_vit fine-tuned at 2048 px: 65,536 tokens, hundreds of GiB of activations per image; the check
    names it in one line and exits non-zero, though the backbone itself runs (meta device)."""
    config = yaml.safe_load(_demo_path().read_text())
    config["image_size"] = 2048
    config["backbones"] = [{"name": "tiny_vit", "weights": "random"}]
    config["tasks"] = [t for t in config["tasks"] if t["name"] in ("chest_xray", "brain_mri")]
    config["protocols"] = [p for p in config["protocols"] if p["name"] in ("knn", "finetune")]
    path = tmp_path / "huge.yaml"
    path.write_text(yaml.safe_dump(config))
    rc = main(["check", str(path), "--weights", "random"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 1
    assert lines[-2].startswith("train  FAILED  tiny_vit finetune @2048px: ")
    assert "does not fit gpu_a100x8's 40 GiB" in lines[-2]
    assert lines[-1] == "1/1 (backbone, image size) ok; 0/1 trainable cells placed; not placed: tiny_vit finetune@2048"
