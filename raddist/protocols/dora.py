"""DoRA: LoRA with weight decomposition (Liu et al. 2024; peft's use_dora) -- each adapted weight
learns its magnitude apart from its direction. The same settings and targets as lora.py; the
checkpoint holds the adapters, the magnitudes and the head.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from raddist.protocols import lora
from raddist.protocols.base import Prediction, TrainInputs
from raddist.protocols.registry import register_protocol
from raddist.protocols.trainable.protocol import TASK_TYPES
from raddist.protocols.trainable.protocol import run as run_trainable


@dataclass(frozen=True)
class DoRA(lora.LoRA):
    name: ClassVar[str] = "dora"

    def peft_config(self):
        return dataclasses.replace(super().peft_config(), use_dora=True)


class Params(lora.Params):
    def method(self) -> DoRA:
        return DoRA(**dataclasses.asdict(super().method()))


@register_protocol("dora", task_types=TASK_TYPES, params=Params, reads="images")
def run(inputs: TrainInputs, params: Params, seed: int) -> Prediction:
    return run_trainable(inputs, params, seed)
