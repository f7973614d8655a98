"""Evaluation protocols, one module each, registered by name (registry.py).

    record = protocols.get("knn")        # ProtocolRecord: task types, what it reads, Params, run
    record.run(inputs, record.parse(params), seed)

Importing this package registers every protocol and imports neither torch nor scikit-learn: they
are imported inside the functions that compute, so planning runs without them.
"""

from raddist.protocols import (  # noqa: F401  (each module registers its protocol on import)
    attention_mil, bitfit, dora, fewshot, finetune, knn, linear, logreg, lora, mlknn, seg_linear, seg_unet,
)
from raddist.protocols.registry import ProtocolRecord, get, names, records, register_protocol

__all__ = ["ProtocolRecord", "get", "names", "records", "register_protocol"]
