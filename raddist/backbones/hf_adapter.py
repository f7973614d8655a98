"""Give a transformers ViT timm's ``forward_intermediates`` interface, and a team's own token model too.

So ``Embedder`` and the trainable protocols see one API for every backbone. ``TokenAdapter`` turns a
list of per-block token tensors (B, prefix + h*w, D) into timm's outputs; ``HFViTAdapter`` gets that
list from a transformers model (ViTMSNModel, Dinov2Model, Dinov2WithRegistersModel, SiglipVisionModel):
the tokens of block i are ``hidden_states[i + 1]`` (hidden_states[0] is the embedding output), and
``norm=True`` applies the model's final layernorm, exactly as transformers does to ``last_hidden_state``.

Prefix tokens (a class token, register tokens) are never patch tokens: ``num_prefix_tokens`` of them
are split off before the grid is formed; the class token, where there is one, is prefix 0.
"""

from __future__ import annotations

import inspect
from typing import List, Optional, Union

import torch
from timm.models._features import feature_take_indices


class TokenAdapter(torch.nn.Module):
    """timm's forward_intermediates over ``block_tokens(x)``: every block's (B, P + h*w, D) tokens."""

    num_prefix_tokens = 1
    patch_size: int
    depth: int

    def block_tokens(self, x: torch.Tensor) -> List[torch.Tensor]:
        raise NotImplementedError

    def final_norm(self, y: torch.Tensor) -> torch.Tensor:
        return y

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, P + h*w, D) tokens of the last block after the final norm (like timm)."""
        return self.final_norm(self.block_tokens(x)[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,  # accepted for timm compatibility; every block runs
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        assert output_fmt in ("NCHW", "NLC"), "output_fmt must be NCHW or NLC"
        take_indices, _ = feature_take_indices(self.depth, indices)
        B, _, H, W = x.shape
        if H % self.patch_size or W % self.patch_size:  # as timm refuses: a floored grid drops pixels silently
            raise ValueError(f"input {H}x{W} is not divisible by patch size {self.patch_size}")
        blocks = self.block_tokens(x)
        h, w = H // self.patch_size, W // self.patch_size
        intermediates = []
        for i in take_indices:
            y = self.final_norm(blocks[i]) if norm else blocks[i]
            prefix, tokens = y[:, : self.num_prefix_tokens], y[:, self.num_prefix_tokens:]
            if output_fmt == "NCHW":
                tokens = tokens.reshape(B, h, w, -1).permute(0, 3, 1, 2).contiguous()
            intermediates.append((tokens, prefix) if return_prefix_tokens else tokens)
        if intermediates_only:
            return intermediates
        return self.final_norm(blocks[-1]), intermediates


def hf_prefix_tokens(cfg) -> int:
    """Class token (none in SigLIP) plus register tokens (Dinov2WithRegisters: num_register_tokens)."""
    has_cls = not str(getattr(cfg, "model_type", "")).startswith("siglip")
    return int(has_cls) + int(getattr(cfg, "num_register_tokens", 0) or 0)


class HFViTAdapter(TokenAdapter):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        cfg = model.config
        self.embed_dim = cfg.hidden_size
        self.patch_size = cfg.patch_size
        self.depth = cfg.num_hidden_layers
        self.num_prefix_tokens = hf_prefix_tokens(cfg)
        self._image_size = cfg.image_size
        # Dinov2 always interpolates its position embeddings; ViT/ViTMSN/SigLIP are told to
        self._asks_interpolation = "interpolate_pos_encoding" in inspect.signature(model.forward).parameters

    def block_tokens(self, x: torch.Tensor) -> List[torch.Tensor]:
        kwargs = {}
        if self._asks_interpolation:
            kwargs["interpolate_pos_encoding"] = tuple(x.shape[-2:]) != (self._image_size, self._image_size)
        return list(self.model(pixel_values=x, output_hidden_states=True, **kwargs).hidden_states[1:])

    def final_norm(self, y: torch.Tensor) -> torch.Tensor:
        norm = getattr(self.model, "layernorm", None) or getattr(self.model, "post_layernorm", None)
        return norm(y) if norm is not None else y
