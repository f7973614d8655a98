"""Linear segmentation probe: a 1x1 convolution on the last block's patch-token grid, its logits
upsampled bilinearly to the mask size (the reference's linear head).

Trained with MONAI's DiceCELoss over a learning-rate grid, all heads on the same mini-batches;
selected on validation Dice; test scored once (seg_common).
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
