"""End-to-end fine-tuning: every backbone parameter and a linear head train, on Ray Train.

The learning-rate grid is searched with Ray Tune and the (learning rate, epoch) chosen on
validation; test is scored once with that checkpoint (raddist.train.protocol).
"""

from __future__ import annotations

from functools import partial
from typing import List

from pydantic import Field, PositiveFloat

from raddist.train.protocol import TASK_TYPES, TrainParams
from raddist.train.protocol import run as run_trainable

NEEDS_EMBEDDINGS = False
__all__ = ["TASK_TYPES", "NEEDS_EMBEDDINGS", "Params", "run"]


class Params(TrainParams):
    lrs: List[PositiveFloat] = Field(default=[1e-5, 1e-4], min_length=1)  # the whole network moves: lower


run = partial(run_trainable, "finetune")  # run(inputs: TrainInputs, params, seed) -> Prediction
