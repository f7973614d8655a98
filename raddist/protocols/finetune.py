"""End-to-end fine-tuning: every backbone parameter and a linear head train, on Ray Train.

The learning-rate grid is searched with Ray Tune and the (learning rate, epoch) chosen on
validation; test is scored once with that checkpoint (raddist.protocols.trainable.protocol).
"""

from __future__ import annotations

from typing import List

from pydantic import Field, PositiveFloat

from raddist.protocols.base import Prediction, TrainInputs
from raddist.protocols.registry import register_protocol
from raddist.protocols.trainable.protocol import TASK_TYPES, TrainParams
from raddist.protocols.trainable.protocol import run as run_trainable


class Params(TrainParams):
    lrs: List[PositiveFloat] = Field(default=[1e-5, 1e-4], min_length=1)  # the whole network moves: lower


@register_protocol("finetune", task_types=TASK_TYPES, params=Params, reads="images")
def run(inputs: TrainInputs, params: Params, seed: int) -> Prediction:
    return run_trainable("finetune", inputs, params, seed)
