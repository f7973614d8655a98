"""LoRA: low-rank adapters on the backbone's attention and MLP projections (+ a linear head).

Defaults are the reference study's setting (Baharoon et al.): r = 48, alpha = 16, dropout 0.1 on
qkv, fc1 and fc2, all configurable; the reference's `bias="lora_only"` (the adapted layers' biases
train too) is a setting that `mode: reference` takes, raddist's default "none". The backbone's own weights stay frozen; checkpoints hold the
adapters and the head only (peft get_peft_model_state_dict). Backbones without the target modules
(CNNs) are refused with the names that are missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, List, Literal

from pydantic import Field, PositiveInt

from raddist.protocols.base import Prediction, TrainInputs
from raddist.protocols.registry import register_protocol
from raddist.protocols.trainable.method import PeftMethod
from raddist.protocols.trainable.protocol import TASK_TYPES, TrainParams
from raddist.protocols.trainable.protocol import run as run_trainable


@dataclass(frozen=True)
class LoRA(PeftMethod):
    name: ClassVar[str] = "lora"
    r: int = 48
    alpha: int = 16
    dropout: float = 0.1
    bias: str = "none"  # peft's: "none" | "lora_only" | "all"

    def peft_config(self):
        import peft

        return peft.LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                               target_modules=list(self.target_modules), modules_to_save=["head"], bias=self.bias)


class Params(TrainParams):
    r: PositiveInt = 48
    alpha: PositiveInt = 16
    dropout: float = Field(default=0.1, ge=0, lt=1)
    target_modules: List[str] = Field(default=["qkv", "fc1", "fc2"], min_length=1)
    bias: Literal["none", "lora_only", "all"] = "none"  # which biases train (peft); the reference: lora_only

    def method(self) -> LoRA:
        return LoRA(target_modules=tuple(self.target_modules), r=self.r, alpha=self.alpha, dropout=self.dropout,
                    bias=self.bias)


@register_protocol("lora", task_types=TASK_TYPES, params=Params, reads="images")
def run(inputs: TrainInputs, params: Params, seed: int) -> Prediction:
    return run_trainable(inputs, params, seed)
