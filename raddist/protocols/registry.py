"""The protocol registry: each protocol registers one typed record, in the way of timm's register_model.

    @register_protocol("knn", task_types=CLASSIFICATION, params=Params)
    def run(inputs: FrozenInputs, params: Params, seed: int) -> Prediction: ...

Planning, the sweep and the cell stage read only these records. Registering imports nothing heavy:
a protocol module imports torch, scikit-learn and MONAI inside its functions, so that loading a
spec and making its plan works on a machine without them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Literal, Optional, Tuple, Type

from pydantic import BaseModel

# What a protocol reads:
#   features      the cached per-image features (class tokens, mean patch token)
#   patch_tokens  the cached patch-token grids and masks (segmentation heads)
#   images        the images themselves: it trains the backbone on Ray Train (fine-tuning, PEFT)
Reads = Literal["features", "patch_tokens", "images"]


@dataclass(frozen=True)
class ProtocolRecord:
    name: str
    task_types: Tuple[str, ...]
    params: Type[BaseModel]  # pydantic model of its parameters; unknown keys are errors
    run: Callable  # run(inputs, params, seed) -> Prediction (SegPrediction for segmentation)
    reads: Reads = "features"
    patch_token_blocks: int = 0  # blocks of patch tokens the embedding job must cache for it
    # the cells one protocol entry expands into, as param dicts (few-shot: one per shots x draw x
    # probe); None: one cell with the entry's params
    expand: Optional[Callable[[BaseModel], List[dict]]] = None

    @property
    def needs_embeddings(self) -> bool:
        return self.reads != "images"

    @property
    def trainable(self) -> bool:
        """Trains the backbone itself (Ray Train); its cell reads images, not the cache."""
        return self.reads == "images"

    def variants(self, params: BaseModel) -> List[dict]:
        return self.expand(params) if self.expand else [params.model_dump()]

    def parse(self, params: dict) -> BaseModel:
        return self.params(**params)


_REGISTRY: Dict[str, ProtocolRecord] = {}


def register_protocol(name: str, *, task_types, params: Type[BaseModel], reads: Reads = "features",
                      patch_token_blocks: int = 0, expand: Optional[Callable] = None):
    """Decorator of a protocol's run function: records it under `name`."""
    def decorate(run: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"protocol '{name}' is registered twice")
        _REGISTRY[name] = ProtocolRecord(name, tuple(task_types), params, run, reads, patch_token_blocks, expand)
        return run

    return decorate


def get(name: str) -> ProtocolRecord:
    if name not in _REGISTRY:
        raise KeyError(f"unknown protocol '{name}'; allowed: {names()}")
    return _REGISTRY[name]


def names() -> List[str]:
    return sorted(_REGISTRY)


def records() -> List[ProtocolRecord]:
    return [_REGISTRY[n] for n in names()]
