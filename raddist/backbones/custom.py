"""Build a ``python:<module>:<callable>`` backbone: a team's own model, with the contract it declares
(raddist.backbones.resolve.backbone). The module it returns either has timm's ``forward_intermediates``
already, or its forward gives every block's tokens, which ``BlockTokensAdapter`` turns into timm's API."""

from __future__ import annotations

import importlib
from typing import List, Optional

import torch

from raddist.backbones.hf_adapter import TokenAdapter
from raddist.backbones.registry import BackboneConfig


class BlockTokensAdapter(TokenAdapter):
    def __init__(self, model: torch.nn.Module, config: BackboneConfig):
        super().__init__()
        self.model = model
        self.patch_size, self.depth, self.embed_dim = config.patch_size, config.num_blocks, config.embed_dim
        self.num_prefix_tokens = int(config.kwargs.get("prefix_tokens", 1))
        self._name = config.name

    def block_tokens(self, x: torch.Tensor) -> List[torch.Tensor]:
        blocks = self.model(x)
        if not isinstance(blocks, (list, tuple)) or len(blocks) != self.depth:
            raise ValueError(f"{self._name}: forward must return a list of {self.depth} block outputs "
                             f"(B, prefix + h*w, D), got {type(blocks).__name__}"
                             f"{f' of {len(blocks)}' if isinstance(blocks, (list, tuple)) else ''}")
        return list(blocks)

    def final_norm(self, y: torch.Tensor) -> torch.Tensor:
        norm = getattr(self.model, "norm", None)
        return norm(y) if norm is not None else y


def build_python(config: BackboneConfig, kind: str, path: Optional[str]) -> torch.nn.Module:
    from raddist.backbones.weights import _load_file_into, _seeded

    module_name, _, attr = config.model_id.rpartition(":")
    factory = getattr(importlib.import_module(module_name), attr)
    with _seeded():
        model = factory(pretrained=kind == "hub")
    if kind == "file":
        _load_file_into(model, path)
    return model if hasattr(model, "forward_intermediates") else BlockTokensAdapter(model, config)
