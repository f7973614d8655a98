"""Images for training: split assignment, decode once into Ray Data, augment on the worker.

Decode once: each split's manifest rows go through the embedding pipeline's decoder (the same
PreprocessContract, the same uint8 squares) in Ray Data tasks, once per cell; rows that fail to
decode are dropped and counted. The result is materialised in the object store, so every
learning rate and every epoch streams the same decoded blocks and nothing is decoded twice.
Augmentation (RandomResizedCrop, scale 0.75-1, and horizontal flip) runs on the training worker,
on its device, on float tensors, as one batched affine resample.
"""

from __future__ import annotations

import math
from typing import Dict, Sequence, Tuple

import numpy as np
import pyarrow as pa

from raddist.protocols.selection import carve_patients, labels_of

CROP_SCALE = (0.75, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


def assign_splits(table: pa.Table, seed: int) -> pa.Table:
    """The manifest with a val split: its own, or one carved from train by patient (seeded).

    Test rows are never touched: selection must not see them.
    """
    splits = np.asarray(table["split"].to_pylist(), dtype=object)
    if (splits == "val").any():
        return table
    train_idx = np.flatnonzero(splits == "train")
    patients = np.asarray(table["patient_id"].to_pylist(), dtype=object)[train_idx]
    splits[train_idx[carve_patients(patients, seed)]] = "val"
    return table.set_column(table.column_names.index("split"), "split", pa.array(splits.tolist(), pa.string()))


def decode_split(table: pa.Table, labels: np.ndarray, contract: dict, rows_per_block: int = 32):
    """(materialised Dataset of {'index', 'image', 'label'}, rows dropped). 'index' is the row of table."""
    import ray

    n = table.num_rows
    # decoded blocks keep the manifest's order, whichever task finishes first: reruns train alike
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    items = [{"index": i, "row": i, "uri": u, "label": labels[i]} for i, u in enumerate(table["uri"].to_pylist())]
    ds = ray.data.from_items(items, override_num_blocks=max(1, math.ceil(n / rows_per_block)))
    ds = ds.map_batches(_decode_rows, fn_kwargs={"contract": contract}, batch_format="numpy", batch_size=None)
    ds = ds.select_columns(["index", "image", "label"]).materialize()
    return ds, n - ds.count()


def _decode_rows(batch: dict, contract: dict) -> dict:
    from raddist.data.decode import DecodeBatch

    out = DecodeBatch(contract)(batch)
    ok = np.array([e == "" for e in out["error"]], dtype=bool)
    return {"index": batch["index"][ok], "image": out["image"][ok], "label": batch["label"][ok]}


def decode_splits(table: pa.Table, task_type: str, label_columns: Sequence[str], contract: dict
                  ) -> Tuple[Dict[str, object], Dict[str, pa.Table], Dict[str, int]]:
    """Per split: (decoded datasets, the split's manifest rows, rows dropped)."""
    labels = labels_of(table, task_type, label_columns)
    labels = labels.astype(np.int64 if task_type == "multiclass" else np.float32)
    splits = np.asarray(table["split"].to_pylist(), dtype=object)
    datasets, rows, dropped = {}, {}, {}
    for name in ("train", "val", "test"):
        idx = np.flatnonzero(splits == name)
        rows[name] = table.take(pa.array(idx))
        datasets[name], dropped[name] = decode_split(rows[name], labels[idx], contract)
        if datasets[name].count() == 0:
            raise ValueError(f"no decodable '{name}' images ({dropped[name]} failed)")
    return datasets, rows, dropped


def augment(x, scale: Tuple[float, float] = CROP_SCALE, ratio: Tuple[float, float] = CROP_RATIO):
    """RandomResizedCrop + horizontal flip, independently per image, batched: (B, C, H, W) float.

    Crop sides are fractions of the image, (area * ratio)^1/2 wide and (area / ratio)^1/2 high,
    clipped to the image; each crop is resampled (bilinear) to the full size, flipped with p = 0.5.
    Draws from torch's global RNG (seeded per worker and epoch by the loop).
    """
    import torch
    import torch.nn.functional as F

    b = x.shape[0]
    area = torch.empty(b).uniform_(*scale)
    aspect = torch.empty(b).uniform_(math.log(ratio[0]), math.log(ratio[1])).exp()
    w, h = (area * aspect).sqrt().clamp(max=1.0), (area / aspect).sqrt().clamp(max=1.0)
    cx = (torch.rand(b) * (1 - w) + w / 2) * 2 - 1  # crop centre in [-1, 1] coordinates
    cy = (torch.rand(b) * (1 - h) + h / 2) * 2 - 1
    flip = torch.where(torch.rand(b) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.contiguous(memory_format=torch.channels_last)
