"""Backbones: the registry of named models, how their weights are loaded, and how features come out.

    from raddist.backbones.registry import get_config
    from raddist.backbones.weights import build_model
    from raddist.backbones.embedder import Embedder

    config = get_config("dinov2_vitb14")
    model = build_model(config, weights="hub")            # or "random", or a .safetensors/.pth URI
    embedder = Embedder(config, model, n_last_blocks=4).to("cuda")
    features = embedder(uint8_images)                     # {'cls': ..., 'patch_mean': ...}

This package imports only the registry: torch comes with weights.py and embedder.py, so that
planning, which reads the registry's literals, runs without it.
"""

from raddist.backbones.registry import (
    STUDY_BACKBONES,
    TEST_BACKBONES,
    BackboneConfig,
    get_config,
    list_backbones,
    register,
)
from raddist.backbones import resolve as _resolve  # noqa: E402 - adds the timm:/hf:/open_clip:/python: resolvers

_resolve.load_entry_points()  # backbones installed packages declare (group raddist.backbones)

__all__ = ["BackboneConfig", "STUDY_BACKBONES", "TEST_BACKBONES", "get_config", "list_backbones", "register"]
