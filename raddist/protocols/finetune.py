"""End-to-end fine-tuning: every backbone parameter and a linear head train, on Ray Train.

The learning-rate grid is searched with Ray Tune and the (learning rate, epoch) chosen on
validation; test is scored once with that checkpoint (raddist.protocols.trainable.protocol).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, List

from pydantic import Field, PositiveFloat

from raddist.protocols.base import Prediction, TrainInputs
from raddist.protocols.registry import register_protocol
from raddist.protocols.trainable.method import Method
from raddist.protocols.trainable.protocol import TASK_TYPES, TrainParams
from raddist.protocols.trainable.protocol import run as run_trainable


@dataclass(frozen=True)
class FineTune(Method):
    """Every parameter trains, BatchNorm statistics too; the checkpoint is the whole state dict."""

    name: ClassVar[str] = "finetune"
    full: ClassVar[bool] = True

    def trains(self, parameter_name: str) -> bool:
        return True


class Params(TrainParams):
    lrs: List[PositiveFloat] = Field(default=[1e-5, 1e-4], min_length=1)  # the whole network moves: lower

    def method(self) -> FineTune:
        return FineTune()


@register_protocol("finetune", task_types=TASK_TYPES, params=Params, reads="images")
def run(inputs: TrainInputs, params: Params, seed: int) -> Prediction:
    return run_trainable(inputs, params, seed)
