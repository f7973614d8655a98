"""BitFit: only the backbone's bias terms train (+ a linear head); every weight stays frozen.

Checkpoints hold the biases and the head only; BatchNorm statistics stay as loaded.
"""

from __future__ import annotations

from functools import partial

from raddist.train.protocol import TASK_TYPES
from raddist.train.protocol import TrainParams as Params
from raddist.train.protocol import run as run_trainable

NEEDS_EMBEDDINGS = False
__all__ = ["TASK_TYPES", "NEEDS_EMBEDDINGS", "Params", "run"]

run = partial(run_trainable, "bitfit")  # run(inputs: TrainInputs, params, seed) -> Prediction
