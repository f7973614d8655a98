"""Every registered backbone, at every image size a shipped config plans, on the real architecture.

Built on the meta device (no memory, no weights) and forwarded through the product's feature code
(Embedder, as the embedding actors run it), so a size or architecture error fails here in seconds.
The tiny test ViT takes any size, which is how 448 px segmentation crashing every timm ViT with a
class token went unseen: the study's own architectures are the ones under test here.
"""

import functools
from pathlib import Path

import pytest
import timm
import torch

import raddist
from raddist.backbones.embedder import Embedder
from raddist.backbones.registry import get_config, libraries, list_backbones, size_error, size_note
from raddist.backbones.weights import any_size, build_model
from raddist.plan import make_plan
from raddist.config import load

CONFIGS = sorted(p.stem for p in (Path(raddist.__file__).parent / "configs").glob("*.yaml"))


def planned_sizes():
    """Every image size any shipped config plans, for embedding jobs and trainable cells alike."""
    sizes = set()
    for name in CONFIGS:
        plan = make_plan(load(name))  # unset ${VARS} are only noted: planning reads no data
        sizes |= {job.contract["size"] for job in plan.jobs.values()}
        sizes |= {cell.contract["size"] for cell in plan.cells}
    return sorted(sizes)


SIZES = planned_sizes()


def test_the_shipped_configs_plan_the_study_sizes():
    assert CONFIGS == ["demo", "paper", "paper-recommended", "radiology-2026", "smoke"]
    assert {224, 448, 1024} <= set(SIZES)


@functools.lru_cache(maxsize=2)  # parametrize orders by backbone: each is built once
def meta_embedder(name: str) -> Embedder:
    config = get_config(name)
    with torch.device("meta"):
        model = build_model(config, "random")
        return Embedder(config, model, n_last_blocks=min(4, config.num_blocks), patch_tokens=5)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", list_backbones())
def test_backbone_runs_at_every_planned_size(name, size):
    config = get_config(name)
    embedder = meta_embedder(name)
    images = torch.empty((2, size, size), dtype=torch.uint8, device="meta")
    if size_error(config, size):  # e.g. 1024 on a patch-14 ViT: refused at preflight, and by the model
        assert f"patch size {config.patch_size}" in size_error(config, size)
        with pytest.raises(Exception, match="divisible by patch size|patch"):
            embedder(images)
        return
    out = embedder(images)
    assert out["cls"].shape == (2, sum(embedder.block_dims))
    tokens = out["patch_tokens"]
    assert tokens.shape[:2] == (2, config.embed_dim)
    if config.patch_size:
        grid = size // config.patch_size
        assert tokens.shape[2:] == (grid, grid)
        assert all(out[f"patch_tokens_{k}"].shape[2:] == (grid, grid) for k in range(2, embedder.patch_tokens + 1))
    else:  # CNNs: the last stage is 1/32 of the input (VGG's last conv block, before its pool: 1/16), rounded
        # up or down by the strided convs and pools where the size is no multiple of 32 (336: 10.5 -> 11)
        assert tokens.shape[2] in (size // 32, -(-size // 32), size // 16, -(-size // 16))


def test_size_errors_name_the_sizes_that_fit():
    assert size_error(get_config("dinov2_vitb14"), 448) is None
    assert size_error(get_config("dinov2_vitb14"), 223) == (
        "image size 223 is not a multiple of dinov2_vitb14's patch size 14 (use 210 or 224)")
    assert size_error(get_config("resnet152"), 223) is None  # CNNs take any size


def test_sam_off_its_training_size_is_said():
    sam = get_config("sam_vitl16")
    assert size_note(sam, 1024) == ""
    assert size_note(sam, 448) == (
        "sam_vitl16 runs at 448 as every backbone at this task's size (the reference's too); its weights were "
        "trained at 1024 only (position embeddings interpolated; at 1024 its patch tokens would take 5.2x the cache)")
    plan = make_plan(load("paper"))
    assert plan.size_notes() == [size_note(sam, 448)]
    assert plan.table().splitlines()[-1] == f"note: {size_note(sam, 448)}"
    assert size_note(get_config("dinov2_vitb14"), 448) == ""


def test_libraries_each_backbone_needs():
    assert libraries(get_config("dinov2_vitb14"), "hub") == [("timm", "timm")]
    assert libraries(get_config("biomedclip_vitb16"), "random") == [("timm", "timm")]  # its timm trunk
    assert libraries(get_config("biomedclip_vitb16"), "hub") == [("timm", "timm"), ("open_clip", "open_clip_torch")]
    assert libraries(get_config("msn_vitl16"), "random") == [("transformers", "transformers")]


def test_any_size_is_timms_dynamic_img_size_and_changes_nothing_at_the_built_size():
    """A trunk built at one size (open_clip's) and switched by any_size gives, at every size, exactly
    what timm's dynamic_img_size build gives; and at its built size exactly what it gave before (the
    cached features of that size stay valid)."""
    torch.manual_seed(0)
    fixed = timm.create_model("vit_tiny_patch16_224", num_classes=0, depth=2).eval()
    dynamic = timm.create_model("vit_tiny_patch16_224", num_classes=0, depth=2, dynamic_img_size=True).eval()
    dynamic.load_state_dict(fixed.state_dict())
    x224, x448 = torch.randn(2, 3, 224, 224), torch.randn(1, 3, 448, 448)
    with torch.no_grad():
        before = fixed.forward_features(x224)
        with pytest.raises(AssertionError, match="448"):
            fixed.forward_features(x448)
        switched = any_size(fixed)
        assert torch.equal(switched.forward_features(x224), before)
        assert torch.equal(dynamic.forward_features(x224), before)
        assert switched.forward_features(x448).shape == (1, 1 + 28 * 28, 192)
        assert torch.allclose(switched.forward_features(x448), dynamic.forward_features(x448), atol=1e-6)
