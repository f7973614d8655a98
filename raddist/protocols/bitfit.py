"""BitFit: only the backbone's bias terms train (+ a linear head); every weight stays frozen.

Checkpoints hold the biases and the head only; BatchNorm statistics stay as loaded.
"""

from __future__ import annotations

from raddist.protocols.base import Prediction, TrainInputs
from raddist.protocols.registry import register_protocol
from raddist.protocols.trainable.protocol import TASK_TYPES, TrainParams
from raddist.protocols.trainable.protocol import run as run_trainable


class Params(TrainParams):
    pass


@register_protocol("bitfit", task_types=TASK_TYPES, params=Params, reads="images")
def run(inputs: TrainInputs, params: Params, seed: int) -> Prediction:
    return run_trainable("bitfit", inputs, params, seed)
