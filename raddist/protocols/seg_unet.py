"""UNet-style segmentation decoder over the frozen patch tokens of the last five blocks.

What raddist builds: the last block's tokens are the bottleneck, first through a stem (3x3
convolution to channels[0], BatchNorm, ReLU). Up to four up-blocks follow, each a transposed
convolution x2, a skip from an earlier block concatenated, then a 3x3 convolution, BatchNorm, ReLU:
block -2 into the coarsest up-block through -5 into the finest. A skip is a 1x1 projection of that
block's tokens to the up-block's width, resized bilinearly (align_corners=False) to its grid (ViT
blocks share one grid; CNN stages come at their own). Widths are `channels` (256, 128, 64, 32),
whatever the backbone's width. Up-blocks stop once the grid reaches the mask size (16 -> 256 for a
224 px ViT/14: four); a 1x1 convolution gives the class logits, which are resized bilinearly to the
mask size (training, validation) or to the source's size (test). A model with fewer blocks has
fewer skips. Tokens are standardised per channel (seg_common).
Trained with MONAI's DiceCELoss and AdamW at a constant learning rate over a learning-rate grid,
each head until its validation Dice plateaus (patience 40 epochs of at least 24 mini-batches,
learning rate x0.1 on the first plateau, stopped on the second; seg_common); selected on validation
Dice; test scored once on the source grid, without refit (seg_common). Those are raddist's
defaults: `mode: reference` (paper.yaml) sets the reference's SGD, Dice loss, batch 128, raw tokens
and refit below (seg_common.SegParams); the decoder stays raddist's.

The reference study's decoder (DINOv2ForRadiology, segmentation/utils.py) shares the idea, not the
details: no stem (the LayerNorm'd last block is the bottleneck as it is); widths D/2, D/4, D/8, then
the number of classes, with no 1x1 output convolution (the last up-block ends in BatchNorm + ReLU);
skips are 3x3 convolutions + BatchNorm + ReLU, resized with align_corners=True; always four
up-blocks (32 -> 512 at 448 px), then a bicubic resize to 448; SGD (momentum 0.9, no weight decay,
cosine over 10 epochs) with a Dice loss over a grid of 7 learning rates, augmented 448 px inputs,
and the best learning rate retrained on train+val.
"""

from __future__ import annotations

import math
from typing import List

from pydantic import Field, PositiveFloat, PositiveInt

from raddist.protocols.base import SegInputs, SegPrediction
from raddist.protocols.registry import register_protocol
from raddist.protocols.seg_common import TASK_TYPES, SegParams, run_grid

PATCH_TOKEN_BLOCKS = 5  # the embedding job caches the patch tokens of the last five blocks


class Params(SegParams):
    lrs: List[PositiveFloat] = Field(default=[1e-4, 1e-3, 1e-2], min_length=1)
    channels: List[PositiveInt] = Field(default=[256, 128, 64, 32], min_length=1)  # per up-block
    up_blocks: PositiveInt = 4  # at most; fewer when the mask size is reached sooner


def up_blocks_for(grid: int, size: int, most: int) -> int:
    """Doublings from the bottleneck's grid to the mask size, at least one, at most `most`."""
    return max(1, min(most, math.ceil(math.log2(max(size / grid, 1.0)))))


def build(shapes, n_classes: int, size: int, channels=(256, 128, 64, 32), most: int = 4):
    """The decoder: tokens (last block first) -> logits at the finest up-block's grid."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    def conv(c_in, c_out):
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                             nn.ReLU(inplace=True))

    n_up = up_blocks_for(shapes[0][1], size, most)
    widths = [channels[min(i, len(channels) - 1)] for i in range(n_up)]

    class UNetDecoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = conv(shapes[0][0], widths[0])
            self.skipped = [i + 1 < len(shapes) for i in range(n_up)]
            self.up = nn.ModuleList()
            self.skip = nn.ModuleList()
            self.fuse = nn.ModuleList()
            c_prev = widths[0]
            for i, c in enumerate(widths):
                self.up.append(nn.ConvTranspose2d(c_prev, c, 2, stride=2))
                self.skip.append(nn.Conv2d(shapes[i + 1][0], c, 1) if self.skipped[i] else nn.Identity())
                self.fuse.append(conv(2 * c if self.skipped[i] else c, c))
                c_prev = c
            self.out = nn.Conv2d(c_prev, n_classes, 1)

        def forward(self, tokens):
            x = self.stem(tokens[0])
            for i in range(n_up):
                x = self.up[i](x)
                if self.skipped[i]:
                    s = self.skip[i](tokens[i + 1])
                    if s.shape[-2:] != x.shape[-2:]:
                        s = F.interpolate(s, size=x.shape[-2:], mode="bilinear", align_corners=False)
                    x = torch.cat([x, s], dim=1)
                x = self.fuse[i](x)
            return self.out(x)

    return UNetDecoder()


@register_protocol("seg_unet", task_types=TASK_TYPES, params=Params, reads="patch_tokens",
                   patch_token_blocks=PATCH_TOKEN_BLOCKS)
def run(inputs: SegInputs, params: Params, seed: int) -> SegPrediction:
    def builder(shapes, n_classes, size):
        return build(shapes, n_classes, size, params.channels, params.up_blocks)

    return run_grid(inputs, params, seed, builder, blocks=PATCH_TOKEN_BLOCKS)
