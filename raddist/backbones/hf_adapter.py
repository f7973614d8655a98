"""Give a transformers ViT (e.g. ViTMSNModel) timm's ``forward_intermediates`` interface.

So ``Embedder`` and the trainable protocols see one API for every backbone. The class token of
block i is ``hidden_states[i + 1][:, 0]`` (hidden_states[0] is the embedding output); ``norm=True``
applies the model's final layernorm, exactly as transformers does to ``last_hidden_state``.
"""

from __future__ import annotations

from typing import List, Optional, Union

import torch
from timm.models._features import feature_take_indices


class HFViTAdapter(torch.nn.Module):
    num_prefix_tokens = 1

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        cfg = model.config
        self.embed_dim = cfg.hidden_size
        self.patch_size = cfg.patch_size
        self.depth = cfg.num_hidden_layers
        self._image_size = cfg.image_size

    def _run(self, x: torch.Tensor):
        size_differs = tuple(x.shape[-2:]) != (self._image_size, self._image_size)
        return self.model(pixel_values=x, output_hidden_states=True, interpolate_pos_encoding=size_differs)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1 + h*w, D) tokens of the last block after the final norm (like timm)."""
        return self._run(x).last_hidden_state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,  # accepted for timm compatibility; transformers runs all blocks
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        assert output_fmt in ("NCHW", "NLC"), "output_fmt must be NCHW or NLC"
        take_indices, _ = feature_take_indices(self.depth, indices)
        out = self._run(x)
        B, _, H, W = x.shape
        h, w = H // self.patch_size, W // self.patch_size
        intermediates = []
        for i in take_indices:
            y = out.hidden_states[i + 1]
            if norm:
                y = self.model.layernorm(y)
            prefix, tokens = y[:, : self.num_prefix_tokens], y[:, self.num_prefix_tokens:]
            if output_fmt == "NCHW":
                tokens = tokens.reshape(B, h, w, -1).permute(0, 3, 1, 2).contiguous()
            intermediates.append((tokens, prefix) if return_prefix_tokens else tokens)
        if intermediates_only:
            return intermediates
        return out.last_hidden_state, intermediates
