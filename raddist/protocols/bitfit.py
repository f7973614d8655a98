"""BitFit: only the backbone's bias terms train (+ a linear head); every weight stays frozen.

Checkpoints hold the biases and the head only; BatchNorm statistics stay as loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from raddist.protocols.base import Prediction, TrainInputs
from raddist.protocols.registry import register_protocol
from raddist.protocols.trainable.method import Method
from raddist.protocols.trainable.protocol import TASK_TYPES, TrainParams
from raddist.protocols.trainable.protocol import run as run_trainable


@dataclass(frozen=True)
class BitFit(Method):
    name: ClassVar[str] = "bitfit"

    def trains(self, parameter_name: str) -> bool:
        return parameter_name.endswith(".bias")


class Params(TrainParams):
    def method(self) -> BitFit:
        return BitFit()


@register_protocol("bitfit", task_types=TASK_TYPES, params=Params, reads="images")
def run(inputs: TrainInputs, params: Params, seed: int) -> Prediction:
    return run_trainable(inputs, params, seed)
