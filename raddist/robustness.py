"""Image corruptions for robustness sweeps (issue 26 item 4): worse images, the same heads.

Each corruption takes a decoded image in [0, 1] (float, (H, W) or (H, W, C), as the decode step's
windowing leaves it) and a severity 1..5, and returns an image of the same shape and dtype in [0, 1].
The parameters follow ImageNet-C's ladder (Hendrycks & Dietterich, 2019), scaled to grey radiographs.
A corruption is deterministic per image and seed: its noise comes from a generator seeded by
(seed, a stable hash of the image's sample id), so a rerun, another worker or another order of the
rows corrupts each image identically, and the result can be cached like any other embedding job.

Wired as the sweep spec's `robustness:` block (spec.RobustnessSpec): raddist.plan makes one embedding
job per backbone x task x corruption x severity, its contract carrying `corruption` (so its cache key
does); raddist.embed.jobs sends it the test rows only; the decode step (data.transforms) corrupts each
image after windowing, before quantising and resizing; raddist.cells.corrupted adds the corrupted
features as further test sets `test:corruption/<kind>/<severity>`, scored by the heads selected on the
clean validation split, with the paired drop from the clean test set. Classification of 2D images and
of volumes stored as slice images (pooled per volume as the clean ones); whole NIfTI volumes and
segmentation are left out.
"""

from __future__ import annotations

import hashlib
import io
from typing import Callable, Dict

import numpy as np

CORRUPTIONS = ("gaussian_noise", "gaussian_blur", "contrast", "jpeg", "downsample")
SEVERITIES = (1, 2, 3, 4, 5)
# per corruption, its parameter at severities 1..5
PARAMS: Dict[str, tuple] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.10, 0.14),  # noise std on [0, 1]
    "gaussian_blur": (0.5, 1.0, 1.5, 2.0, 3.0),  # sigma, pixels at 224 (scaled by the image's side)
    "contrast": (0.75, 0.6, 0.45, 0.3, 0.2),  # kept fraction of the deviation from the mean
    "jpeg": (80, 65, 50, 30, 15),  # JPEG quality
    "downsample": (0.75, 0.5, 0.35, 0.25, 0.15),  # side kept before resizing back (bilinear)
}


# the frozen protocols whose selected head scores further test sets (protocols.selection.scored)
SCORES_EXTRA = ("attention_mil", "knn", "linear", "logreg", "mlknn")
PREFIX = "corruption/"  # a corrupted test set is named corruption/<kind>/<severity>


class CorruptionError(ValueError):
    pass


def check_names(corruptions=(), severities=(), protocols=()) -> None:
    """One line naming the first unknown corruption, severity or protocol (the spec's `robustness:` block)."""
    for name in corruptions:
        if name not in CORRUPTIONS:
            raise CorruptionError(f"unknown corruption {name!r}; allowed: {list(CORRUPTIONS)}")
    for level in severities:
        if level not in SEVERITIES:
            raise CorruptionError(f"severity {level!r} is not one of {list(SEVERITIES)}")
    for name in protocols or ():
        if name not in SCORES_EXTRA:
            raise CorruptionError(f"protocol {name!r} does not score further test sets; allowed: {list(SCORES_EXTRA)}")


def test_set_name(corruption: dict) -> str:
    """The further test set a corrupted job's features are scored as: corruption/<kind>/<severity>."""
    return f"{PREFIX}{corruption['name']}/{corruption['severity']}"


def image_seed(seed: int, sample_id: str) -> np.random.Generator:
    """The generator of one image's corruption: (seed, a stable 64-bit hash of its sample id)."""
    digest = hashlib.sha256(str(sample_id).encode()).digest()
    return np.random.default_rng([int(seed), int.from_bytes(digest[:8], "little")])


def _gaussian_noise(x, level, rng):
    return x + rng.normal(0.0, level, size=x.shape)


def _gaussian_blur(x, level, rng):
    from scipy.ndimage import gaussian_filter

    sigma = level * min(x.shape[:2]) / 224
    return gaussian_filter(x, sigma=(sigma, sigma) + (0,) * (x.ndim - 2), mode="nearest")


def _contrast(x, level, rng):
    mean = x.mean(axis=(0, 1), keepdims=True)
    return (x - mean) * level + mean


def _pil(x):
    from PIL import Image

    u8 = np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)
    return Image.fromarray(u8 if u8.ndim == 2 or u8.shape[2] == 3 else u8[..., 0])


def _jpeg(x, level, rng):
    from PIL import Image

    buf = io.BytesIO()
    _pil(x).save(buf, "JPEG", quality=int(level))
    out = np.asarray(Image.open(io.BytesIO(buf.getvalue())), dtype=np.float64) / 255
    return out.reshape(x.shape)


def _downsample(x, level, rng):
    from PIL import Image

    h, w = x.shape[:2]
    small = (max(1, round(w * level)), max(1, round(h * level)))
    chans = [x] if x.ndim == 2 else [x[..., c] for c in range(x.shape[2])]
    out = [np.asarray(Image.fromarray(np.asarray(c, np.float32), "F").resize(small, Image.BILINEAR)
                      .resize((w, h), Image.BILINEAR)) for c in chans]
    return out[0] if x.ndim == 2 else np.stack(out, axis=-1)


_FUNCS: Dict[str, Callable] = {"gaussian_noise": _gaussian_noise, "gaussian_blur": _gaussian_blur,
                               "contrast": _contrast, "jpeg": _jpeg, "downsample": _downsample}


def corrupt(image: np.ndarray, name: str, severity: int, seed: int, sample_id: str) -> np.ndarray:
    """The image under corruption `name` at `severity` (1..5), deterministic per (seed, sample_id)."""
    if name not in _FUNCS:
        raise CorruptionError(f"unknown corruption {name!r}; allowed: {list(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise CorruptionError(f"corruption severity {severity!r} is not one of {list(SEVERITIES)}")
    if not np.issubdtype(np.asarray(image).dtype, np.floating):
        raise CorruptionError(f"image of dtype {np.asarray(image).dtype}: expected floats in [0, 1]")
    x = np.asarray(image, dtype=np.float64)
    if x.ndim not in (2, 3):
        raise CorruptionError(f"image of shape {x.shape}: expected (H, W) or (H, W, C)")
    out = _FUNCS[name](x, PARAMS[name][severity - 1], image_seed(seed, sample_id))
    return np.clip(out, 0.0, 1.0).astype(np.asarray(image).dtype, copy=False)
