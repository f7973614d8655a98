"""The registry's literals against timm's pretrained cfgs, and against the real models on the meta device."""

import pytest
import timm
import torch
from timm.models import get_pretrained_cfg, is_model

from raddist.backbones.embedder import Embedder, feature_dims
from raddist.backbones.registry import (
    STUDY_BACKBONES,
    TEST_BACKBONES,
    BackboneConfig,
    get_config,
    list_backbones,
    register,
)
from raddist.backbones.weights import build_model

ALL = list_backbones()
TIMM = [n for n in ALL if get_config(n).source == "timm"]


def test_every_study_backbone_is_registered():
    assert set(STUDY_BACKBONES) | set(TEST_BACKBONES) <= set(ALL)
    assert len(STUDY_BACKBONES) == 14


def test_unknown_name_names_the_allowed_ones():
    with pytest.raises(KeyError) as err:
        get_config("dinov3")
    assert "dinov2_vitb14" in str(err.value) and "tiny_vit" in str(err.value)


def test_register_refuses_duplicates_and_bad_fields():
    with pytest.raises(ValueError, match="already registered"):
        register(get_config("tiny_vit"))
    with pytest.raises(ValueError, match="source"):
        BackboneConfig("x", "torchhub", "x", 224, (0, 0, 0), (1, 1, 1), 16, 8, 2, "vit")
    with pytest.raises(ValueError, match="block_dims"):
        BackboneConfig("x", "timm", "resnet18", 224, (0, 0, 0), (1, 1, 1), None, 512, 4, "cnn")


@pytest.mark.parametrize("name", [n for n in TIMM if n not in TEST_BACKBONES])
def test_timm_id_and_pretrained_tag_exist(name):
    config = get_config(name)
    assert is_model(config.arch)
    assert config.model_id in timm.list_pretrained(config.arch + ".*")


def test_open_clip_trunk_is_a_timm_model():
    config = get_config("biomedclip_vitb16")
    assert is_model(config.timm_arch)


@pytest.mark.parametrize("name", TIMM)
def test_literals_match_timm_pretrained_cfg(name):
    config = get_config(name)
    cfg = get_pretrained_cfg(config.model_id)
    assert cfg is not None, config.model_id
    assert config.mean == tuple(cfg.mean)
    assert config.std == tuple(cfg.std)
    # an explicit img_size (DINOv2 at 224) overrides the checkpoint's size; the random-init test
    # models pick their own small size
    if name not in TEST_BACKBONES:
        assert config.input_size == config.kwargs.get("img_size", cfg.input_size[-1])
    assert config.license == cfg.license


def test_feature_dims_from_literals():
    assert feature_dims(get_config("dinov2_vitg14"), 4) == [1536] * 4
    assert feature_dims(get_config("resnet152"), 2) == [1024, 2048]
    with pytest.raises(ValueError, match="n_last_blocks"):
        feature_dims(get_config("densenet201"), 5)


@pytest.mark.parametrize("name", ALL)
def test_real_model_matches_literals_on_meta_device(name):
    """Build every backbone (ViT-g included) on the meta device: no memory, no weights, real shapes."""
    config = get_config(name)
    with torch.device("meta"):
        model = build_model(config, "random")
        embedder = Embedder(config, model, n_last_blocks=config.num_blocks, patch_tokens=True)
        images = torch.empty((2, config.input_size, config.input_size), dtype=torch.uint8)
        out = embedder(images)
    assert out["cls"].shape == (2, sum(feature_dims(config, config.num_blocks)))
    assert ("patch_mean" in out) == config.has_patch_mean
    if config.has_patch_mean:
        assert out["patch_mean"].shape == (2, config.embed_dim)
    tokens = out["patch_tokens"]
    assert tokens.shape[:2] == (2, config.embed_dim)
    if config.patch_size:
        grid = config.input_size // config.patch_size
        assert tokens.shape[2:] == (grid, grid)
    if config.family == "vit":
        depth = getattr(model, "depth", None) or len(model.blocks)
        assert depth == config.num_blocks
