"""Linear segmentation probe: a 1x1 convolution on the last block's patch-token grid, its logits
upsampled bilinearly (to the mask size to train and validate, to the source's size to score test).

Trained with MONAI's DiceCELoss over a learning-rate grid, all heads on the same mini-batches, each
until its validation Dice plateaus (patience 40 epochs of at least 24 mini-batches, the AdamW
learning rate x0.1 on the first plateau, stopped on the second; seg_common); selected on validation
Dice; test scored once on the source grid, without refit (seg_common).

The head's structure is the reference study's linear decoder (a 1x1 convolution, bilinear
upsampling); its training is not. The reference fed the last block's tokens after the final
LayerNorm, unstandardised, to a head initialised N(0, 0.01); trained it with SGD (momentum 0.9,
cosine decay over a fixed 10 epochs), a Dice loss, at 448 px with flips and rotations; retrained the
best learning rate on train+val; and scored Dice pooled over the test pixels on the 448 grid.
raddist standardises the cached tokens, keeps PyTorch's initialisation, trains on cached tokens
without augmentation at the backbone's input size, does not refit, and scores each case on its
source grid. `mode: reference` (paper.yaml) takes the reference's optimizer, loss, batch, raw tokens
and refit (seg_common.SegParams); its initialisation, augmentation and pooled 448-grid Dice stay
raddist's.
"""

from __future__ import annotations

from typing import List

from pydantic import Field, PositiveFloat

from raddist.protocols.base import SegInputs, SegPrediction
from raddist.protocols.registry import register_protocol
from raddist.protocols.seg_common import TASK_TYPES, SegParams, run_grid

PATCH_TOKEN_BLOCKS = 1  # the embedding job caches the last block's patch tokens


class Params(SegParams):
    lrs: List[PositiveFloat] = Field(default=[1e-3, 1e-2, 1e-1], min_length=1)


def build(shapes, n_classes: int, size: int):
    """The head: tokens (last block first) -> logits at the token grid."""
    from torch import nn

    class LinearHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(shapes[0][0], n_classes, kernel_size=1)

        def forward(self, tokens):
            return self.conv(tokens[0])

    return LinearHead()


@register_protocol("seg_linear", task_types=TASK_TYPES, params=Params, reads="patch_tokens",
                   patch_token_blocks=PATCH_TOKEN_BLOCKS)
def run(inputs: SegInputs, params: Params, seed: int) -> SegPrediction:
    return run_grid(inputs, params, seed, build, blocks=1)
