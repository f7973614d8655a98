"""What the segmentation heads share: their inputs, training over a learning-rate grid, selection on
validation Dice, and the test prediction.

Inputs (SegInputs, built by raddist.cells from the embedding cache): per split the cached
patch-token grids (float16, the last block first), the masks at the output size, and which case
(2D image, or volume) and slice each row is.
Training: every head of the grid sees the same mini-batches, one pass over the cached tokens per
epoch (the idea of dinov2's linear.py); the tokens are standardised per channel with the training
split's statistics, so one learning-rate grid fits every backbone. AdamW, cosine decay per step,
MONAI's DiceCELoss (softmax, one-hot targets) on the logits resized bilinearly to the mask size.
No augmentation: the backbone is frozen and never re-run. On a GPU when the cell holds one.
Selection: the head with the best validation Dice (seg_metrics.mean_dice over the validation
cases; ties go to the lower learning rate). The test split is predicted once, by that head.
Cases: a 2D image is scored alone; the slices of a volume are reassembled by slice index.
"""

from __future__ import annotations

import math
from typing import Callable, List, Tuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt

from raddist.protocols.base import SegCase, SegInputs, SegPrediction, SegSplit
from raddist.protocols.selection import select_best, train_val_split

TASK_TYPES = ("segmentation",)
BATCH_ORDER_STREAM = 0x5E6  # keeps the batch order's random stream apart from the seed's other uses


class SegParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lrs: List[PositiveFloat] = Field(default=[1e-3, 3e-3, 1e-2], min_length=1)
    epochs: PositiveInt = 30
    batch_size: PositiveInt = 16
    weight_decay: float = Field(default=1e-4, ge=0)


# a head: (token-grid shapes (D, h, w), last block first; number of classes; output size) ->
# a torch.nn.Module taking the standardised token grids (last block first), returning logits (B, K, h', w')
HeadBuilder = Callable[[List[Tuple[int, int, int]], int, int], object]


def run_grid(inputs: SegInputs, params: SegParams, seed: int, build: HeadBuilder, blocks: int) -> SegPrediction:
    """Train one head per learning rate on train, select on validation Dice, predict test once."""
    from raddist.seg_metrics import mean_dice

    train, val = train_val_split(inputs, seed)
    n_classes = len(inputs.class_names)
    stats = token_stats(train, blocks)
    lrs = sorted(set(params.lrs))
    heads = fit_heads(build, lrs, train, stats, n_classes, params, seed)
    val_truth = val.masks

    def val_dice(i: int) -> float:
        return mean_dice(cases_of(inputs, val, predict(heads[i], val, stats, params.batch_size), val_truth), n_classes)

    best, score, scores = select_best(list(range(len(heads))), val_dice)
    test = inputs.splits["test"]
    cases = cases_of(inputs, test, predict(heads[best], test, stats, params.batch_size), test.masks)
    return SegPrediction(
        cases=cases, val_score=score,
        selected={"lr": lrs[best], "val_dice": dict(zip(map(str, lrs), [round(s, 4) for s in scores]))},
    )


def token_stats(split: SegSplit, blocks: int, chunk: int = 256) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Per-channel (mean, std) of each of the first `blocks` token grids, accumulated in float64."""
    stats = []
    for t in split.tokens[:blocks]:
        s = np.zeros(t.shape[1]), np.zeros(t.shape[1])
        for a in range(0, len(t), chunk):
            x = t[a:a + chunk].astype(np.float64)
            s = s[0] + x.sum((0, 2, 3)), s[1] + (x ** 2).sum((0, 2, 3))
        n = len(t) * t.shape[2] * t.shape[3]
        mean = s[0] / n
        std = np.sqrt(np.maximum(s[1] / n - mean ** 2, 0.0))
        std[std < 1e-6] = 1.0  # a constant channel carries nothing; leave it centred
        stats.append((mean.astype(np.float32), std.astype(np.float32)))
    return stats


def _batch(split: SegSplit, idx: np.ndarray, stats, device):
    """The standardised float32 token grids of rows idx, on the device (float16 travels)."""
    import torch

    def standardise(t, m, s):
        x = torch.from_numpy(np.ascontiguousarray(t[idx])).to(device).float()
        return (x - torch.from_numpy(m).to(device)[:, None, None]) / torch.from_numpy(s).to(device)[:, None, None]

    return [standardise(t, m, s) for t, (m, s) in zip(split.tokens, stats)]


def _logits(head, x, size: int):
    import torch.nn.functional as F

    out = head(x)
    if out.shape[-1] != size or out.shape[-2] != size:
        out = F.interpolate(out, size=(size, size), mode="bilinear", align_corners=False)
    return out


def fit_heads(build: HeadBuilder, lrs: List[float], train: SegSplit, stats, n_classes: int,
              params: SegParams, seed: int) -> list:
    """One head per learning rate, all stepping on the same mini-batches."""
    import torch
    from monai.losses import DiceCELoss

    from raddist.device import torch_device

    shapes = [tuple(int(n) for n in t.shape[1:]) for t in train.tokens[:len(stats)]]
    size = train.masks.shape[-1]
    device = torch_device()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        heads = [build(shapes, n_classes, size).to(device) for _ in lrs]
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    steps = params.epochs * math.ceil(len(train) / params.batch_size)
    opts = [torch.optim.AdamW(h.parameters(), lr=lr, weight_decay=params.weight_decay) for h, lr in zip(heads, lrs)]
    scheds = [torch.optim.lr_scheduler.CosineAnnealingLR(o, max(1, steps)) for o in opts]
    rng = np.random.default_rng([seed, BATCH_ORDER_STREAM])
    for h in heads:
        h.train()
    for _ in range(params.epochs):
        order = rng.permutation(len(train))
        for a in range(0, len(order), params.batch_size):
            idx = np.sort(order[a:a + params.batch_size])
            if len(idx) < 2 and len(order) > 1:  # a batch of one breaks BatchNorm; drop the remainder
                continue
            x = _batch(train, idx, stats, device)
            y = torch.from_numpy(train.masks[idx].astype(np.int64))[:, None].to(device)
            for head, opt, sched in zip(heads, opts, scheds):
                loss = loss_fn(_logits(head, x, size), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    for h in heads:
        h.eval()
    return heads


def predict(head, split: SegSplit, stats, batch_size: int) -> np.ndarray:
    """uint8 (N, S, S) label maps: argmax of the logits at the mask size."""
    import torch

    size = split.masks.shape[-1]
    device = next(head.parameters()).device
    out = np.zeros(split.masks.shape, np.uint8)
    with torch.inference_mode():
        for a in range(0, len(split), batch_size):
            idx = np.arange(a, min(a + batch_size, len(split)))
            logits = _logits(head, _batch(split, idx, stats, device), size)
            out[idx] = logits.argmax(1).to(torch.uint8).cpu().numpy()
    return out


def cases_of(inputs: SegInputs, split: SegSplit, pred: np.ndarray, truth: np.ndarray) -> List[SegCase]:
    """Group rows into cases: a 2D image alone, or a volume's slices stacked by slice index."""
    from raddist.data.volumes import assemble

    cases = []
    for case_id in sorted(set(split.case_ids)):
        rows = np.flatnonzero(split.case_ids == case_id)
        geometry = inputs.geometry[case_id]
        if inputs.volumetric and geometry.affine is not None:  # a NIfTI volume: every slice, once
            p = assemble(split.slice_index[rows], pred[rows], geometry.source_shape[0])
            t = assemble(split.slice_index[rows], truth[rows], geometry.source_shape[0])
        elif inputs.volumetric:  # slices listed in a manifest: stacked in slice order
            order = rows[np.argsort(split.slice_index[rows], kind="stable")]
            p, t = pred[order], truth[order]
        else:
            p, t = pred[rows[0]], truth[rows[0]]
        cases.append(SegCase(str(case_id), str(split.patient_ids[rows[0]]), p, t, geometry.spacing,
                             geometry.affine, geometry.source_shape))
    return cases
