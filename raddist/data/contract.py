"""The preprocessing contract: how a stored image becomes the uint8 square a backbone sees.

The contract is part of every embedding cache key, so a change to any field means new embeddings.
Normalisation (mean/std) is not here: it belongs to the backbone and runs on the accelerator.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, Optional, Tuple, Union

Window = Union[Literal["auto"], Tuple[float, float]]


@dataclass(frozen=True)
class PreprocessContract:
    size: int = 224
    # "auto": the DICOM's own VOI window when it has one, else the image's range.
    # (center, width): a fixed window in modality units (HU for CT), as radiologists use.
    window: Window = "auto"
    # (low, high) percentiles to clip to before scaling, e.g. (5, 95) for MRI. Applied after window.
    clip_percentiles: Optional[Tuple[float, float]] = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessContract":
        window = d.get("window", "auto")
        clip = d.get("clip_percentiles")
        return cls(
            size=int(d.get("size", 224)),
            window=window if window == "auto" else tuple(float(v) for v in window),
            clip_percentiles=None if clip is None else tuple(float(v) for v in clip),
        )
