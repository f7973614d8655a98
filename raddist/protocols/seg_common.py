"""What the segmentation heads share: their inputs, training over a learning-rate grid until
validation Dice plateaus, selection on validation Dice, and the test prediction on the source grid.

Inputs (SegInputs, built by raddist.cells from the embedding cache): per split the cached
patch-token grids (float16, the last block first), the masks at the output size S x S (the model's
input size, nearest-resized from the source), which case (2D image, or volume) and slice each row
is, and where each case's ORIGINAL label map is (the manifest's mask_uri).
Training: every head of the grid sees the same mini-batches, one pass over the cached tokens per
epoch (the idea of dinov2's linear.py); the tokens are standardised per channel with the training
split's statistics, so one learning-rate grid fits every backbone. AdamW at a CONSTANT learning
rate, MONAI's DiceCELoss (softmax, one-hot targets) on the logits resized bilinearly to S x S.
No augmentation: the backbone is frozen and never re-run. On a GPU when the cell holds one.
An epoch is at least `min_epoch_steps` (24) mini-batches: a training split of fewer is passed over
several times, each pass reshuffled (one pass under a fixed budget).
Stopping (stopping.Plateau, the rule every trained head shares, run by stopping.train_grid): every
`eval_every` epochs each head's validation Dice is computed; a head keeps a copy of its weights
whenever the Dice is its best so far (the later epoch on a tie). Once it has not risen by more than
`min_delta` for `patience` epochs (40) its learning rate falls x`lr_factor` (0.1) on the first such
plateau (`lr_drops`: 1) and it stops on the next; `epochs` (400) is the cap. Each head ends at its best
epoch. The rate depends on the head's own plateaus, not on the cap, so under a larger cap a head
that had stopped stops at the same epoch with the same weights.
Validation is on the output grid: Dice of the argmax at S x S against the cached masks, per case
(a volume's slices summed), from voxel counts computed on the device. On the source grid every
check would read the validation label maps and resize every head's logits to them, which costs
more than the training it steers; validation only ranks heads and epochs. selected['val_dice'] and
val_score are this Dice; the test metrics are on the source grid.
Selection: the head with the best validation Dice at its best epoch (ties: the lower learning
rate). There is no refit on train+val: that head, at its best epoch, predicts test once.
Test, on the SOURCE grid: per slice the head's logits are resized bilinearly (torch
F.interpolate, align_corners=False) to the source's (H, W) and argmaxed there; a volume's slices
are stacked by slice index into (D, H, W); the truth is the label map read from the manifest's
mask_uri (each test case once), not the cached S x S mask. So a structure a few pixels wide at S is
scored on the pixels it really has. Spacing for HD95: the source's (NIfTI: mm from the affine;
2D images and listed slices: 1.0 per pixel).
selected records max_epochs, epochs_trained (how long the chosen head trained), best_epoch (whose
weights scored test), stopped ('plateau' | 'cap' | 'fixed') and every learning rate's best epoch.
stopping="fixed" is the reference's budget instead: exactly `epochs` epochs, the learning rate
decayed by a cosine to zero over them, each head validated once, at the end.
The reference code's other settings (`mode: reference` sets them): optimizer="sgd" (momentum 0.9)
with weight_decay=0, loss="dice" (MONAI's DiceLoss, softmax, background included), batch_size=128,
standardize=False (the tokens as cached) and refit=True: the chosen learning rate retrained from
scratch on train+val for its best epoch's count of epochs (its drops replayed), then test scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, List, Literal, Optional, Tuple

import numpy as np
from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt

from raddist.protocols.base import SegCase, SegInputs, SegPrediction, SegSplit
from raddist.protocols.stopping import ModuleGrid, Record, Schedule, Stopping, train_grid
from raddist.protocols.selection import select_best, train_val_split

TASK_TYPES = ("segmentation",)
BATCH_ORDER_STREAM = 0x5E6  # keeps the batch order's random stream apart from the seed's other uses


class SegParams(Stopping):
    lrs: List[PositiveFloat] = Field(default=[1e-3, 3e-3, 1e-2], min_length=1)
    min_delta: float = Field(default=1e-3, ge=0)  # in validation Dice
    # Small structures start late: a head predicts background alone for tens of epochs before its
    # validation Dice rises, and patience 10 stopped such heads there (benchmarks/RESULTS.md, issue 23)
    patience: PositiveInt = 40
    epochs: PositiveInt = 400  # the cap: at patience 40 a small-structure head still rose at epoch 221
    lr_drops: NonNegativeInt = 1  # one plateau lowers the learning rate x lr_factor; the next stops
    # Under plateau stopping an epoch is at least this many optimizer steps: a small training split is
    # passed over several times (reshuffled each pass) per epoch, as nnU-Net's epochs are a fixed number
    # of steps, so patience and cap mean as much training on 36 images as on 3,600. At 3 steps an epoch,
    # heads on structures of one or two patches still rose at 4x the patience (benchmarks/RESULTS.md,
    # issue 23). A fixed budget (stopping: fixed, the reference's) counts single passes.
    min_epoch_steps: PositiveInt = 24
    batch_size: PositiveInt = 16
    weight_decay: float = Field(default=1e-4, ge=0)
    optimizer: Literal["adamw", "sgd"] = "adamw"  # sgd: momentum 0.9 (the reference)
    loss: Literal["dice_ce", "dice"] = "dice_ce"  # MONAI's DiceCELoss, or DiceLoss alone (the reference)
    standardize: bool = True  # tokens standardised per channel on the fitting set; False: as cached
    refit: bool = False  # retrain the chosen learning rate on train+val before test (the reference)


# a head: (token-grid shapes (D, h, w), last block first; number of classes; output size) ->
# a torch.nn.Module taking the standardised token grids (last block first), returning logits (B, K, h', w')
HeadBuilder = Callable[[List[Tuple[int, int, int]], int, int], object]


def run_grid(inputs: SegInputs, params: SegParams, seed: int, build: HeadBuilder, blocks: int) -> SegPrediction:
    """Train one head per learning rate on train until validation Dice plateaus, select on it,
    predict test once on its source grid."""
    train, val = train_val_split(inputs, seed)
    n_classes = len(inputs.class_names)
    data = TokenData(train, val, token_stats(train, blocks, params.standardize), n_classes)
    lrs = sorted(set(params.lrs))
    heads, record = fit_heads(build, lrs, data, params, seed)
    passes = epoch_passes(len(train), params)
    best, score, scores = select_best(list(range(len(heads))), lambda i: record.best_score[i])
    head, stats, refit = heads[best], data.stats, {}
    if params.refit:  # selection is done: the chosen rate retrained on train+val, as long as it trained
        fit_set = concat(train, val)
        data = TokenData(fit_set, val, token_stats(fit_set, blocks, params.standardize), n_classes)
        schedule = Schedule.replay(record, best)
        (head,), _ = fit_heads(build, [lrs[best]], data, params, seed, schedule=schedule)
        stats, refit = data.stats, {"refit_epochs": schedule.epochs, "fit_size": len(fit_set)}
    cases = source_cases(inputs, inputs.splits["test"], head, stats, params.batch_size)
    return SegPrediction(
        cases=cases, val_score=score,
        selected={"lr": lrs[best], "val_dice": dict(zip(map(str, lrs), [round(s, 4) for s in scores])),
                  "max_epochs": params.epochs, "epochs_trained": int(record.epochs_run[best]),
                  "best_epoch": int(record.best_epoch[best]), "stopped": record.stopped[best],
                  "best_epochs": dict(zip(map(str, lrs), map(int, record.best_epoch))),
                  "lr_drops": [int(e) for e in record.lr_drops[best]], "epoch_passes": passes,
                  "stopping_rule": _rule(params), **refit,
                  **_reference_settings(params)},
    )


def _rule(params: SegParams) -> str:
    """The stopping rule in words, with what an epoch is under it."""
    if params.stopping != "plateau":
        return params.rule()
    return (f"{params.rule()}; an epoch is at least {params.min_epoch_steps} mini-batches (a smaller training "
            "split passed over several times)")


def _reference_settings(params: SegParams) -> dict:
    """The training choices selected records where one is not raddist's (the reference's settings)."""
    if (params.optimizer, params.loss, params.standardize, params.refit) == ("adamw", "dice_ce", True, False):
        return {}
    return {"optimizer": params.optimizer, "loss": params.loss, "batch_size": params.batch_size,
            "weight_decay": params.weight_decay, "standardize": params.standardize, "refit": params.refit}


def concat(a: SegSplit, b: SegSplit) -> SegSplit:
    """Two splits as one fitting set (train+val for a refit)."""
    return SegSplit([np.concatenate([x, y]) for x, y in zip(a.tokens, b.tokens)], np.concatenate([a.masks, b.masks]),
                    *(np.concatenate([getattr(a, f), getattr(b, f)])
                      for f in ("sample_ids", "patient_ids", "case_ids", "slice_index")))


def token_stats(split: SegSplit, blocks: int, standardize: bool = True,
                chunk: int = 256) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Per-channel (mean, std) of each of the first `blocks` token grids, accumulated in float64;
    (0, 1), the identity, without standardize."""
    if not standardize:
        return [(np.zeros(t.shape[1], np.float32), np.ones(t.shape[1], np.float32)) for t in split.tokens[:blocks]]
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


def _resized(logits, size: Tuple[int, int]):
    """Logits (B, K, h, w) resized bilinearly to size (H, W), as F.interpolate does it."""
    import torch.nn.functional as F

    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(int(n) for n in size), mode="bilinear", align_corners=False)


def _logits(head, x, size: int):
    return _resized(head(x), (size, size))


@dataclass
class TokenData:
    """What a grid of segmentation heads fits on: the train and val token grids, the per-channel
    statistics they are standardised with (the train split's), and the number of classes."""

    train: SegSplit
    val: SegSplit
    stats: List[Tuple[np.ndarray, np.ndarray]]
    n_classes: int


def fit_heads(build: HeadBuilder, lrs: List[float], data: TokenData, params: SegParams,
              seed: int, schedule: Optional[Schedule] = None) -> Tuple[list, Record]:
    """One head per learning rate, all stepping on the same mini-batches (stopping.train_grid): each
    until its validation Dice plateaus, at most params.epochs, ending at its best epoch's weights; or,
    with stopping="fixed", exactly params.epochs, cosine-decayed, the last weights.
    Returns (heads in eval mode, record); record.best_score is each head's validation Dice at its
    kept epoch. With a schedule (a refit): no validation, its epochs and drops, the last weights."""
    import torch

    from raddist.device import torch_device

    shapes = [tuple(int(n) for n in t.shape[1:]) for t in data.train.tokens[:len(data.stats)]]
    device = torch_device()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        heads = [build(shapes, data.n_classes, data.train.masks.shape[-1]).to(device) for _ in lrs]
    opts = [_optimizer(h, lr, params) for h, lr in zip(heads, lrs)]
    steps = params.cap(schedule) * max(1, -(-len(data.train) // params.batch_size))  # fixed: one pass an epoch
    scheds = ([torch.optim.lr_scheduler.CosineAnnealingLR(o, steps) for o in opts]
              if params.stopping == "fixed" else [])
    batches = _epoch_batches(data, params.batch_size, seed, device, epoch_passes(len(data.train), params))
    grid = ModuleGrid(heads, opts, batches, _loss_of(data, params.loss),
                      lambda h: val_dice(h, data.val, data.stats, params.batch_size, data.n_classes), scheds)
    for h in heads:
        h.train()
    record = train_grid(grid, params, validate=schedule is None, schedule=schedule)
    for h in heads:
        h.eval()
    if params.stopping == "fixed" and schedule is None:  # validated once, at the end
        record.best_score = np.array([grid.score(h) for h in heads], np.float64)
    return heads, record


def _optimizer(head, lr: float, params: SegParams):
    import torch

    if params.optimizer == "sgd":
        return torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=params.weight_decay)
    return torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=params.weight_decay)


def epoch_passes(n_train: int, params: SegParams) -> int:
    """Passes over the training split in one epoch: enough for params.min_epoch_steps steps under
    plateau stopping, one under a fixed budget."""
    if params.stopping != "plateau":
        return 1
    return max(1, -(-params.min_epoch_steps // max(1, -(-n_train // params.batch_size))))


def _epoch_batches(data: TokenData, batch_size: int, seed: int, device, passes: int = 1) -> Callable[[], Iterator]:
    """A new epoch's (tokens, masks) mini-batches of data.train on each call: `passes` passes, each
    in a new seeded order."""
    import torch

    rng = np.random.default_rng([seed, BATCH_ORDER_STREAM])

    def epoch():
        for _ in range(passes):
            order = rng.permutation(len(data.train))
            for a in range(0, len(order), batch_size):
                idx = np.sort(order[a:a + batch_size])
                if len(idx) < 2 and len(order) > 1:  # a batch of one breaks BatchNorm; drop the remainder
                    continue
                y = torch.from_numpy(data.train.masks[idx].astype(np.int64))[:, None].to(device)
                yield _batch(data.train, idx, data.stats, device), y

    return epoch


def _loss_of(data: TokenData, loss: str = "dice_ce") -> Callable:
    """MONAI's DiceCELoss (or DiceLoss) of a head's logits, resized to the mask size, on a batch."""
    from monai.losses import DiceCELoss, DiceLoss

    loss_fn = (DiceCELoss if loss == "dice_ce" else DiceLoss)(to_onehot_y=True, softmax=True)
    size = data.train.masks.shape[-1]
    return lambda head, batch: loss_fn(_logits(head, batch[0], size), batch[1])


def val_dice(head, split: SegSplit, stats, batch_size: int, n_classes: int) -> float:
    """seg_metrics' headline Dice of the head on split, on the output grid against the cached masks:
    per case (a volume's slices summed), from confusion counts computed on the device."""
    import torch

    from raddist.seg_metrics import dice_of_counts

    size, k = split.masks.shape[-1], n_classes
    codes, n_cases = _case_codes(split)
    counts = np.zeros((n_cases, k, k), np.int64)
    device = next(head.parameters()).device
    was_training = head.training
    head.eval()
    with torch.inference_mode():
        for a in range(0, len(split), batch_size):
            idx = np.arange(a, min(a + batch_size, len(split)))
            pred = _logits(head, _batch(split, idx, stats, device), size).argmax(1)
            truth = torch.from_numpy(split.masks[idx].astype(np.int64)).to(device)
            row = torch.arange(len(idx), device=device)[:, None, None]
            cm = torch.bincount((row * k * k + truth * k + pred).reshape(-1), minlength=len(idx) * k * k)
            np.add.at(counts, codes[idx], cm[: len(idx) * k * k].reshape(len(idx), k, k).cpu().numpy())
    head.train(was_training)
    tp = np.diagonal(counts, axis1=1, axis2=2)[:, 1:]
    return dice_of_counts(tp, counts[:, :, 1:].sum(1) - tp, counts[:, 1:, :].sum(2) - tp)


def _case_codes(split: SegSplit) -> Tuple[np.ndarray, int]:
    cases, codes = np.unique(np.asarray(split.case_ids, dtype=str), return_inverse=True)
    return codes.reshape(-1), len(cases)


def source_cases(inputs: SegInputs, split: SegSplit, head, stats, batch_size: int) -> List[SegCase]:
    """The split's cases predicted on their source grid (module docstring), each with the label map
    read from its source once: a 2D image alone, or a volume's slices stacked by slice index."""
    import torch

    from raddist.data.volumes import assemble, read_source_labels

    device = next(head.parameters()).device
    cases = []
    for case_id in sorted(set(split.case_ids)):
        rows = np.flatnonzero(split.case_ids == case_id)
        rows = rows[np.argsort(split.slice_index[rows], kind="stable")]
        geometry = inputs.geometry[case_id]
        if case_id not in inputs.source_masks:
            raise ValueError(f"case {case_id!r} has no source label map to be scored against")
        truth = read_source_labels(inputs.source_masks[case_id], volume=geometry.affine is not None)
        if tuple(truth.shape) != tuple(geometry.source_shape):
            raise ValueError(f"case {case_id!r}: its label map is {truth.shape} now, {tuple(geometry.source_shape)} "
                             "when it was embedded: the mask changed since; recompute the embeddings")
        slices = []
        with torch.inference_mode():
            for a in range(0, len(rows), batch_size):
                logits = head(_batch(split, rows[a:a + batch_size], stats, device))
                for j in range(len(logits)):  # one slice at a time: (K, H, W) floats at the source size
                    up = _resized(logits[j:j + 1], truth.shape[-2:])[0]
                    slices.append(up.argmax(0).to(torch.uint8).cpu().numpy())
        if not inputs.volumetric:
            pred = slices[0]
        elif geometry.affine is not None:  # a NIfTI volume: every slice, once
            pred = assemble(split.slice_index[rows], np.stack(slices), truth.shape[0])
        else:  # slices listed in a manifest: stacked in slice order, as their label maps are
            pred = np.stack(slices)
        cases.append(SegCase(str(case_id), str(split.patient_ids[rows[0]]), pred, truth,
                             geometry.source_spacing_or_pixels(), geometry.affine, tuple(truth.shape)))
    return cases
