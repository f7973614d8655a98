"""Backbones: the registry of named models, how their weights are loaded, and how features come out.

    config = get_config("dinov2_vitb14")
    model = build_model(config, weights="hub")            # or "random", or a .safetensors/.pth URI
    embedder = Embedder(config, model, n_last_blocks=4).to("cuda")
    features = embedder(uint8_images)                     # {'cls': ..., 'patch_mean': ...}
"""

from raddist.backbones.embedder import Embedder, feature_dims
from raddist.backbones.hf_adapter import HFViTAdapter
from raddist.backbones.registry import (
    STUDY_BACKBONES,
    TEST_BACKBONES,
    BackboneConfig,
    get_config,
    list_backbones,
    register,
)
from raddist.backbones.weights import build_model, weights_identity

__all__ = [
    "BackboneConfig",
    "Embedder",
    "HFViTAdapter",
    "STUDY_BACKBONES",
    "TEST_BACKBONES",
    "build_model",
    "feature_dims",
    "get_config",
    "list_backbones",
    "register",
    "weights_identity",
]
