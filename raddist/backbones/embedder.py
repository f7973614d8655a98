"""Turn uint8 images into the features the protocols consume, on whatever device the model is.

Output of ``Embedder.forward`` (float32 tensors), as ``raddist.protocols.base.SplitData`` expects:
  'cls'          (B, sum(block_dims)) one vector per block of the last n, earliest block first:
                   ViT: the class token after the final norm (timm forward_intermediates, norm=True);
                   ViT without a class token (SAM): the mean of the block's tokens (raw block output);
                   CNN: the global-average-pooled stage output.
  'patch_mean'   (B, D) mean patch token of the last block after the final norm. Only for ViTs with
                   a class token (``config.has_patch_mean``); for SAM and CNNs it would repeat 'cls'.
  'patch_tokens' (B, D, h, w) last block's patch tokens / feature map, only if asked for.
  'patch_tokens_<k>' (B, D_k, h_k, w_k) block -k's patch tokens (k = 2..n), when patch_tokens=n > 1:
                   the skips of a UNet decoder. ViT blocks share one grid; CNN stages halve it.
                   n is clipped to the model's depth (``dense_blocks``).
"""

from __future__ import annotations

from typing import Dict, List, Tuple, Union

import torch

from raddist.backbones.registry import BackboneConfig


def feature_dims(config: BackboneConfig, n_last_blocks: int) -> List[int]:
    """Widths of the blocks concatenated in 'cls', earliest first, from the registry literals."""
    if not 1 <= n_last_blocks <= config.num_blocks:
        raise ValueError(f"{config.name}: n_last_blocks must be in 1..{config.num_blocks}, got {n_last_blocks}")
    if config.family == "cnn":
        return list(config.block_dims[-n_last_blocks:])
    return [config.embed_dim] * n_last_blocks


class Embedder(torch.nn.Module):
    def __init__(
        self,
        config: BackboneConfig,
        model: torch.nn.Module,
        n_last_blocks: int = 1,
        patch_mean: bool = True,
        patch_tokens: Union[bool, int] = False,
    ):
        super().__init__()
        self.config = config
        self.model = model.eval().to(memory_format=torch.channels_last)
        self.n_last_blocks = n_last_blocks
        self.block_dims = feature_dims(config, n_last_blocks)
        self.patch_mean = patch_mean and config.has_patch_mean
        self.patch_tokens = dense_blocks(config, int(patch_tokens))
        # x/255 then (x - mean)/std, folded into one multiply-add; buffers follow .to(device).
        std = torch.tensor(config.std, dtype=torch.float32).view(1, 3, 1, 1)
        mean = torch.tensor(config.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std), persistent=False)
        self.register_buffer("shift", -mean / std, persistent=False)

    @property
    def output_keys(self) -> List[str]:
        return ["cls"] + (["patch_mean"] if self.patch_mean else []) + dense_names(self.patch_tokens)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W), (B, 1, H, W) or (B, 3, H, W) -> normalised float32 (B, 3, H, W), channels_last."""
        if images.dtype != torch.uint8:
            raise TypeError(f"expected uint8 images, got {images.dtype}")
        x = images.to(self.scale.device, non_blocking=True)
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected (B, H, W), (B, 1, H, W) or (B, 3, H, W) images, got {tuple(images.shape)}")
        x = x.float().expand(-1, 3, -1, -1)  # grayscale: replicate to the 3 channels every backbone wants
        x = torch.addcmul(self.shift, x, self.scale)
        return x.contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        x = self.normalize(images)
        on_cuda = x.device.type == "cuda"
        with torch.autocast(device_type="cuda" if on_cuda else "cpu", dtype=torch.bfloat16, enabled=on_cuda):
            pooled, grids = self.block_features(x)
            out = {"patch_mean": grids[-1].mean(dim=(2, 3))} if self.patch_mean else {}
        out["cls"] = torch.cat(pooled[-self.n_last_blocks:], dim=1)
        for name, k in zip(dense_names(self.patch_tokens), range(1, self.patch_tokens + 1)):
            out[name] = grids[-k]
        return {k: v.float() for k, v in out.items()}

    def block_features(self, x: torch.Tensor) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """(pooled (B, D_b) per block, patch-token grids (B, D_b, h, w) per block) of the last blocks, earliest
        first, from normalised float images (``normalize``). Autograd records it unless the caller is in
        no_grad/inference mode: training reads the same features the frozen protocols cache."""
        if self.config.family == "cnn":
            return self._cnn(x)
        if self.config.has_cls_token:
            return self._vit(x)
        return self._vit_without_cls(x)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) the last block's 'cls' feature of normalised float images, with gradients when enabled."""
        pooled, _ = self.block_features(x)
        return pooled[-1]

    @property
    def _depth(self) -> int:
        """Blocks to run to the end of: enough for both the class tokens and the patch-token grids."""
        return max(self.n_last_blocks, self.patch_tokens)

    def _vit(self, x):
        outs = self.model.forward_intermediates(
            x, indices=self._depth, norm=True, return_prefix_tokens=True, intermediates_only=True
        )
        # each entry: (patch tokens (B, D, h, w), prefix tokens (B, P, D)); the class token is prefix 0
        return [prefix[:, 0] for _, prefix in outs], [grid for grid, _ in outs]

    def _vit_without_cls(self, x):
        # SAM: norm=True would run the 256-d neck convs; the raw block output keeps the 1024-d tokens.
        outs = self.model.forward_intermediates(x, indices=self._depth, intermediates_only=True)
        return [o.mean(dim=(2, 3)) for o in outs], outs

    def _cnn(self, x):
        indices = list(self.config.block_indices[-self._depth:])
        outs = self.model.forward_intermediates(x, indices=indices, stop_early=True, intermediates_only=True)
        return [o.mean(dim=(2, 3)) for o in outs], outs


def dense_blocks(config: BackboneConfig, requested: int) -> int:
    """How many blocks of patch tokens a request yields: 0, or 1..depth (5 on a 4-block model gives 4)."""
    if requested < 0:
        raise ValueError(f"patch_tokens must be >= 0, got {requested}")
    return min(requested, config.num_blocks)


def dense_names(n: int) -> List[str]:
    """Output names of the last n blocks' patch tokens, the last block first."""
    return ["patch_tokens"][:n] + [f"patch_tokens_{k}" for k in range(2, n + 1)]
