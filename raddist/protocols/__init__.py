"""Protocol registry: name -> the module that implements it.

Each protocol module defines:
  TASK_TYPES        the task types it applies to
  NEEDS_EMBEDDINGS  True when it reads the embedding cache (frozen protocols)
  Params            a pydantic model of its parameters (unknown keys are errors)
  variants(params)  optional: the cells one protocol entry expands into, as param dicts
                    (e.g. few-shot: one cell per shot count and draw). Default: one cell.
  run(inputs, params, seed) -> Prediction
                    inputs: FrozenInputs when NEEDS_EMBEDDINGS, else TrainInputs
Modules are imported on first use, so planning never imports torch.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Dict, List

_MODULES: Dict[str, str] = {
    "knn": "raddist.protocols.knn",
    "mlknn": "raddist.protocols.mlknn",
    "linear": "raddist.protocols.linear",
    "logreg": "raddist.protocols.logreg",
    "fewshot": "raddist.protocols.fewshot",
    "finetune": "raddist.protocols.finetune",
    "lora": "raddist.protocols.lora",
    "bitfit": "raddist.protocols.bitfit",
    "seg_linear": "raddist.protocols.seg_linear",
    "seg_unet": "raddist.protocols.seg_unet",
    "attention_mil": "raddist.protocols.attention_mil",
}


def names() -> List[str]:
    return sorted(n for n in _MODULES if _available(n))


def _available(name: str) -> bool:
    return importlib.util.find_spec(_MODULES[name]) is not None


def get(name: str) -> ModuleType:
    if name not in _MODULES or not _available(name):
        raise KeyError(f"unknown protocol '{name}'; allowed: {names()}")
    return importlib.import_module(_MODULES[name])


def variants(name: str, params) -> List[dict]:
    module = get(name)
    if hasattr(module, "variants"):
        return module.variants(params)
    return [params.model_dump()]
