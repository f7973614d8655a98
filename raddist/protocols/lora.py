"""LoRA: low-rank adapters on the backbone's attention and MLP projections (+ a linear head).

Reference setting (Baharoon et al.): r = 48, alpha = 16, dropout 0.1 on qkv, fc1 and fc2, all
configurable. The backbone's own weights stay frozen; checkpoints hold the adapters and the head
only (peft get_peft_model_state_dict). Backbones without the target modules (CNNs) are refused
with the names that are missing.
"""

from __future__ import annotations

from functools import partial

from raddist.train.protocol import TASK_TYPES
from raddist.train.protocol import LoraParams as Params
from raddist.train.protocol import run as run_trainable

NEEDS_EMBEDDINGS = False
__all__ = ["TASK_TYPES", "NEEDS_EMBEDDINGS", "Params", "run"]

run = partial(run_trainable, "lora")  # run(inputs: TrainInputs, params, seed) -> Prediction
