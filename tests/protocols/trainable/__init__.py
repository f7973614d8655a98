"""A learnable image task for the trainable protocols: is the top half brighter than the bottom?

Horizontal flips and 0.75-1 area crops keep the answer, so augmentation never flips a label.
A patient's images alternate between the two answers, so any split with a patient has both.
"""

from __future__ import annotations

import io
import os

import numpy as np
import pyarrow as pa

SIZE = 64


def write_halves(out_dir: str, n_patients: int = 24, per_patient: int = 2, seed: int = 0,
                 splits=("train", "val", "test"), fractions=(0.5, 0.25, 0.25)) -> pa.Table:
    """PNGs under out_dir/images and the manifest table (uris absolute); binary label 'top'."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    counts = np.round(np.asarray(fractions) * n_patients).astype(int)
    counts[-1] = n_patients - counts[:-1].sum()
    patient_split = np.repeat(splits, counts)
    rows = {k: [] for k in ("sample_id", "uri", "patient_id", "split", "top")}
    for p in range(n_patients):
        for s in range(per_patient):
            top = (p + s) % 2
            img = rng.normal(110, 20, (SIZE, SIZE))
            img[: SIZE // 2] += 60 if top else 0
            img[SIZE // 2:] += 0 if top else 60
            name = f"p{p:03d}_s{s}"
            uri = os.path.join(out_dir, "images", f"{name}.png")
            buf = io.BytesIO()
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "L").save(buf, "PNG")
            with open(uri, "wb") as f:
                f.write(buf.getvalue())
            for k, v in (("sample_id", name), ("uri", uri), ("patient_id", f"p{p:03d}"),
                         ("split", str(patient_split[p])), ("top", top)):
                rows[k].append(v)
    return pa.table(rows)


class CrashAt:
    """A training-loop hook (fit.trainer's on_epoch): the worker dies like a lost node at `epoch`;
    with a marker file, only the first time (the restarted worker group finds the marker and goes on)."""

    def __init__(self, epoch: int, marker: str = ""):
        self.epoch, self.marker = epoch, marker

    def __call__(self, epoch: int) -> None:
        if epoch != self.epoch:
            return
        if self.marker:
            if os.path.exists(self.marker):
                return
            open(self.marker, "w").close()
        import ray.train

        ray.train.get_all_reported_checkpoints()  # let the controller register the last checkpoint first
        os._exit(1)
