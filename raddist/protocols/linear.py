"""Linear probes: a whole grid of heads trained together, in one pass over frozen features.

The idea of dinov2's eval/linear.py: every (learning rate x feature variant) head sees the same
shuffled mini-batches of features held in memory, so the grid costs one pass, not one per head.
Feature variants: the class tokens of the last 1 or 4 blocks, with or without the mean patch token;
each is a contiguous column range of one [cls | patch_mean] matrix (features.py), and the heads of
one variant are one weight tensor (D, heads, C) applied with a single matrix product.

Training: SGD, momentum 0.9, no weight decay, a CONSTANT learning rate lr x batch_size / 256
(dinov2's scaling). Loss: cross-entropy for multiclass, one-logit-per-label BCE for multilabel and
binary (summed over labels, so every label learns at the same rate as a CE head; the reference's
multilabel loss, summed over the batch and averaged over labels, is multilabel_loss="batch_sum").
Inputs are standardised with the mean and std of the set the head is fitted on (comparable learning
rates across backbones whose features differ in scale), or, with normalize='l2', scaled per sample
to norm sqrt(D), which needs no statistics (few-shot sets are too small to estimate them).

Stopping (stopping.Plateau, run by stopping.train_grid as for every trained head): every head
trains until its VALIDATION macro AUROC plateaus. Every `eval_every` epochs
each head is scored on validation and keeps a copy of its weights whenever the score is its best so
far (on a tie, the later epoch: the one trained longer, which matters on small validation sets
whose AUROC takes few values); a head stops (its weights freeze) once its score has not risen by
more than `min_delta` for `patience` epochs; the pass ends when every head has stopped, or at
`epochs`, the cap. Each head then holds its best epoch's weights. A head whose validation AUROC is
undefined (a split with one class) trains to the cap and keeps its last weights. The grid's pass
lasts as long as its slowest head. Heads stop on their own, so a head's result
does not depend on which others share the grid; and the learning rate is constant, so it does not
depend on the cap either: a head that plateaued before a cap N stops at the same epoch, with the
same weights, under any cap above N.

Selection: the head with the best VALIDATION macro AUROC at its best epoch (ties: lower lr, then
fewer blocks, then CLS alone); that one configuration is retrained from scratch on train+val for
its best epoch's count of epochs (no validation is left to stop on) and scores test once.
selected records max_epochs, epochs_trained (how long the chosen head trained before it stopped),
best_epoch (= refit_epochs) and stopped ("plateau", "cap" or "fixed").
stopping="fixed" is the reference's budget instead: every head trains exactly `epochs` epochs with
the learning rate decayed by a cosine to zero over them, is chosen on validation at the end, and the
refit trains as long (the reference mode's setting; it favours heads that converge fast).

The reference study (DINOv2ForRadiology, eval/classification/linear.py) differs: its grid is lrs
[1e-3, 5e-3, 1e-2, 5e-2], NOT scaled by the batch size (its lr x batch / 256 is commented out),
x last {1, 4} blocks x {CLS, CLS + mean patch token of the last block}: 16 heads; raw features (no
standardisation), computed online with augmentation; SGD with cosine decay to zero over a fixed
number of epochs (10 by default, batch 128); the head chosen at the end of training, then refitted
on train+val for as many epochs. Shared: SGD with momentum 0.9 and no weight decay, heads
initialised N(0, 0.01). raddist's default grid is 7 lrs (1e-4 to 1e-1) x the same blocks and pools:
28 heads. `mode: reference` (paper.yaml) takes the reference's grid, budget, normalize="none",
lr_batch_scaling=False and multilabel_loss="batch_sum", and blocks [1] with CLS alone for CNNs (their
final pooled feature); its online augmentation is not reproduced (features are cached).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, List, Literal, Optional, Tuple

import numpy as np
from pydantic import Field, PositiveFloat, PositiveInt

from raddist.protocols.base import CLASSIFICATION, FrozenInputs, Prediction, SplitData
from raddist.protocols.features import column_range, has_patch_mean, label_matrix, num_classes, stacked
from raddist.protocols.registry import register_protocol
from raddist.protocols.stopping import Schedule, Stopping, train_grid
from raddist.protocols.selection import macro_auroc, scored, select_best, train_plus_val, train_val_split

Pool = Literal["cls", "cls_patch"]


class Params(Stopping):
    lrs: List[PositiveFloat] = Field(default=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1], min_length=1)
    blocks: List[PositiveInt] = Field(default=[1, 4], min_length=1)  # clipped to the cached blocks
    pools: List[Pool] = Field(default=["cls", "cls_patch"], min_length=1)  # cls_patch needs patch_mean
    min_delta: float = Field(default=1e-4, ge=0)  # in validation macro AUROC
    batch_size: PositiveInt = 256
    momentum: float = Field(default=0.9, ge=0, lt=1)
    normalize: Literal["standard", "l2", "none"] = "standard"  # none: raw features (the reference)
    # multilabel BCE: summed over labels, averaged over the batch (raddist: each label learns as a CE
    # head), or summed over the batch and averaged over labels (the reference: a step batch / labels
    # times larger, 128 / 15 on NIH)
    multilabel_loss: Literal["label_sum", "batch_sum"] = "label_sum"
    lr_batch_scaling: bool = True  # lr x batch_size / 256 (dinov2's rule); the reference: lrs as given


@dataclass(frozen=True)
class HeadConfig:
    lr: float
    blocks: int
    pool: str


@dataclass
class _Variant:
    """The heads reading one feature variant: one batched weight tensor (heads, D, C)."""

    cols: Tuple[int, int]  # column range of stacked()
    heads: List[int]  # their indices in the grid
    weight: object  # torch.Tensor (D, heads, C): all heads in one (D, heads x C) matrix product
    bias: object  # torch.Tensor (heads, C)
    lr: object  # torch.Tensor (heads,)


@dataclass
class Heads:
    """A trained grid: configs[i] is head i; loss[i, e] its mean training loss in epoch e + 1 (0 once it
    stopped). Trained with validation: epochs_run[i] epochs, weights of epoch best_epoch[i]."""

    configs: List[HeadConfig]
    variants: List[_Variant]
    stats: tuple  # (mean, scale) tensors of the fitting set's columns
    multiclass: bool
    normalize: str
    loss: np.ndarray
    epochs_run: np.ndarray  # (heads,) epochs each head trained before it stopped
    best_epoch: np.ndarray  # (heads,) the epoch whose weights it holds (= epochs_run without validation)
    stopped: List[str]  # per head: 'plateau' | 'cap' | 'fixed'
    lr_drops: List[List[int]]  # per head: the epochs after which its learning rate fell


def head_grid(inputs: FrozenInputs, split: SplitData, params: Params) -> List[HeadConfig]:
    """Every head, lower learning rates first, so select_best breaks ties towards them."""
    pools = [p for p in ("cls", "cls_patch") if p in params.pools and (p == "cls" or has_patch_mean(split))]
    if not pools:
        raise ValueError("pools=['cls_patch'] needs a 'patch_mean' feature, which this backbone's cache lacks")
    blocks = sorted({min(b, len(inputs.block_dims)) for b in params.blocks})
    return [HeadConfig(lr, b, pool) for lr in sorted(set(params.lrs)) for b in blocks for pool in pools]


def _standardise(x, stats: tuple):
    """Every column at once, before any slicing: the variants share columns, so per-variant
    standardising would redo the same arithmetic for each (benchmarks/RESULTS.md: 1.27x)."""
    return (x - stats[0]) / stats[1]


def _prepare(x, cols: Tuple[int, int], normalize: str):
    """The input of one feature variant from standardised x: its columns, rows scaled to norm
    sqrt(D) for 'l2'."""
    import torch

    a, b = cols
    x = x[:, a:b]
    if normalize == "l2":
        x = torch.nn.functional.normalize(x, dim=1) * math.sqrt(x.shape[1])
    return x


def _loss(logits, y, multiclass: bool):
    """Per-head mean loss: logits (B, H, C) -> (H,)."""
    import torch.nn.functional as F

    b, h, c = logits.shape
    if multiclass:
        return F.cross_entropy(logits.reshape(b * h, c), y.repeat_interleave(h), reduction="none").view(b, h).mean(0)
    return F.binary_cross_entropy_with_logits(logits, y[:, None].expand(b, h, c), reduction="none").sum(2).mean(0)


def _fit_stats(x: np.ndarray, normalize: str) -> Tuple[np.ndarray, np.ndarray]:
    """(mean, scale) per column of the fitting set; identity for 'l2', which scales per sample instead,
    and for 'none'."""
    if normalize in ("l2", "none"):
        return np.zeros(x.shape[1], np.float32), np.ones(x.shape[1], np.float32)
    mean, scale = x.mean(0), x.std(0)
    scale[scale < 1e-8] = 1.0  # a constant column carries nothing; leave it centred, not blown up
    return mean, scale


def _init_variants(inputs, split, configs, params, n_cls: int, seed: int, device) -> List[_Variant]:
    """Group the heads by feature variant, each group one (D, heads, C) weight."""
    import torch

    patch_dim = split.features["patch_mean"].shape[1] if has_patch_mean(split) else 0
    by_variant: Dict[Tuple[int, int], List[int]] = {}
    for i, c in enumerate(configs):
        by_variant.setdefault(column_range(inputs.block_dims, c.blocks, c.pool == "cls_patch", patch_dim), []).append(i)
    variants = []
    for cols, idx in by_variant.items():
        # dinov2's init, the same draw for every head: a head's run depends on (seed, its config, data) only,
        # not on which other heads share the pass -- so the refit of the chosen head replays it exactly.
        init = torch.randn(cols[1] - cols[0], n_cls, generator=torch.Generator().manual_seed(seed)) * 0.01
        weight = init[:, None, :].expand(-1, len(idx), -1).clone().to(device).requires_grad_()
        bias = torch.zeros(len(idx), n_cls, device=device, requires_grad=True)
        scaling = params.batch_size / 256 if params.lr_batch_scaling else 1.0  # dinov2's rule
        lr = torch.tensor([configs[i].lr * scaling for i in idx], device=device)
        variants.append(_Variant(cols, idx, weight, bias, lr))
    return variants


class _LinearGrid:
    """The heads of one grid as a stopping.HeadGrid: momentum SGD by hand, one learning rate per head
    (a stopped head's is 0), all variants on the same shuffled mini-batches."""

    def __init__(self, variants: List[_Variant], x, y, params: Params, cap: int, seed: int):
        import torch

        self.variants, self.x, self.y, self.params = variants, x, y, params
        self.n_heads = sum(len(v.heads) for v in variants)
        self.multiclass = y.dtype == torch.long
        self.momenta = {id(p): torch.zeros_like(p) for v in variants for p in (v.weight, v.bias)}
        self.batch_order = torch.Generator().manual_seed(seed)
        self.batch = min(params.batch_size, len(x))
        self.step, self.total_steps = 0, cap * math.ceil(len(x) / self.batch)
        self.history: List[np.ndarray] = []  # per epoch: each head's mean training loss (0 once stopped)
        self.kept = [(v.weight.detach().clone(), v.bias.detach().clone()) for v in variants]
        self.val = None  # (standardised x, targets) to score on
        self.batch_sum = False  # multilabel_loss="batch_sum" on a multilabel task

    def train_epoch(self, active: np.ndarray) -> None:
        import torch

        device, n = self.x.device, len(self.x)
        live = [(v, torch.from_numpy(active[v.heads].astype(np.float32)).to(device))
                for v in self.variants if active[v.heads].any()]
        epoch_loss = torch.zeros(self.n_heads, device=device)  # summed on the device: no sync per step
        order = torch.randperm(n, generator=self.batch_order).to(device)
        for start in range(0, n, self.batch):
            rows = order[start : start + self.batch]
            xb, yb, total = self.x[rows], self.y[rows], 0.0
            for v, on in live:
                losses = _loss(_logits(v, _prepare(xb, v.cols, self.params.normalize)), yb, self.multiclass)
                # heads share no parameters: each gets its own gradient
                total = total + (losses * on).sum() * (len(rows) / yb.shape[1] if self.batch_sum else 1.0)
                epoch_loss[v.heads] += losses.detach() * on * len(rows) / n
                v.weight.grad = v.bias.grad = None
            total.backward()
            self._sgd_step(live)
        self.history.append(epoch_loss.cpu().numpy())

    def _sgd_step(self, live) -> None:
        """SGD with momentum, one learning rate per head, 0 once stopped; cosine-decayed if fixed."""
        import torch

        fixed = self.params.stopping == "fixed"
        decay = 0.5 * (1 + math.cos(math.pi * self.step / self.total_steps)) if fixed else 1.0
        with torch.no_grad():
            for v, on in live:
                for p, shape in ((v.weight, (1, -1, 1)), (v.bias, (-1, 1))):
                    buf = self.momenta[id(p)].mul_(self.params.momentum).add_(p.grad)
                    p.sub_((v.lr * on * decay).view(shape) * buf)
        self.step += 1

    def scores(self, active: np.ndarray) -> np.ndarray:
        x_val, y_val = self.val
        return auroc_per_head(y_val, _probs(self.variants, x_val, self.multiclass, self.params.normalize))

    def _copy(self, heads: np.ndarray, to_kept: bool) -> None:
        import torch

        for v, (w, b) in zip(self.variants, self.kept):
            sel = torch.from_numpy(np.isin(v.heads, heads)).to(w.device)
            with torch.no_grad():
                if to_kept:
                    w[:, sel], b[sel] = v.weight[:, sel], v.bias[sel]
                else:
                    v.weight[:, sel], v.bias[sel] = w[:, sel], b[sel]

    def keep(self, heads: np.ndarray) -> None:
        self._copy(heads, to_kept=True)

    def restore(self, heads: np.ndarray) -> None:
        self._copy(heads, to_kept=False)

    def scale_lr(self, heads: np.ndarray, factor: float) -> None:
        import torch

        for v in self.variants:
            v.lr[torch.from_numpy(np.isin(v.heads, heads)).to(v.lr.device)] *= factor


def train_heads(
    inputs: FrozenInputs, split: SplitData, configs: List[HeadConfig], params: Params, seed: int,
    val: Optional[SplitData] = None, schedule: Optional[Schedule] = None,
) -> Heads:
    """Train every head of configs on split at once (stopping.train_grid), from a seeded
    initialisation and batch order.

    With val: each head until its validation macro AUROC plateaus (module docstring), at most
    params.epochs, keeping its best epoch's weights. Without, or with stopping="fixed": exactly
    `epochs` (default params.epochs), the last epoch's weights.
    """
    import torch

    from raddist.device import torch_device

    device = torch_device()
    x_np = stacked(split).astype(np.float32)
    stats = tuple(torch.from_numpy(a).to(device) for a in _fit_stats(x_np, params.normalize))
    x = _standardise(torch.from_numpy(x_np).to(device), stats)
    multiclass = inputs.task_type == "multiclass"
    y_np = split.labels.astype(np.int64) if multiclass else label_matrix(inputs, split.labels)
    y = torch.from_numpy(y_np).to(device, torch.long if multiclass else torch.float32)
    variants = _init_variants(inputs, split, configs, params, num_classes(inputs, split.labels), seed, device)
    grid = _LinearGrid(variants, x, y, params, params.cap(schedule), seed)
    grid.batch_sum = params.multilabel_loss == "batch_sum" and inputs.task_type == "multilabel"
    if val is not None:
        grid.val = (_standardise(torch.from_numpy(stacked(val).astype(np.float32)).to(device), stats),
                    label_matrix(inputs, val.labels))
    record = train_grid(grid, params, validate=val is not None, schedule=schedule)
    history = np.stack(grid.history, 1).astype(np.float64) if grid.history else np.zeros((len(configs), 0))
    return Heads(configs, variants, stats, multiclass, params.normalize, history, record.epochs_run,
                 record.best_epoch, record.stopped, record.lr_drops)


def _probs(variants: List[_Variant], x, multiclass: bool, normalize: str, chunk: int = 8192):
    """Probabilities of every head on standardised x, on its device: (heads, N, C) float32."""
    import torch

    n_heads = sum(len(v.heads) for v in variants)
    out = torch.zeros(n_heads, len(x), variants[0].weight.shape[2], device=x.device)
    with torch.no_grad():
        for start in range(0, len(x), chunk):
            xb = x[start : start + chunk]
            for v in variants:
                logits = _logits(v, _prepare(xb, v.cols, normalize))
                probs = logits.softmax(-1) if multiclass else logits.sigmoid()
                out[v.heads, start : start + chunk] = probs.transpose(0, 1)
    return out


def auroc_per_head(targets: np.ndarray, probs) -> np.ndarray:
    """Macro AUROC of every head at once, as selection.macro_auroc computes it for one: the mean over
    the columns of targets (N, C) that hold both classes, NaN when none does. probs: (heads, N, C)
    tensor. Mann-Whitney with mid-ranks for ties (= the area under the ROC curve), in float64."""
    import torch

    y = torch.as_tensor(np.asarray(targets) > 0.5, device=probs.device)
    n = y.shape[0]
    n_pos = y.sum(0)
    valid = (n_pos > 0) & (n_pos < n)
    if not bool(valid.any()):
        return np.full(probs.shape[0], np.nan)
    s = probs[:, :, valid].double().transpose(1, 2).contiguous()  # (heads, C', N)
    ordered, order = s.sort(-1)
    mid = (torch.searchsorted(ordered, ordered) + torch.searchsorted(ordered, ordered, right=True) + 1) / 2.0
    ranks = torch.empty_like(mid).scatter_(-1, order, mid)
    pos = y[:, valid].T.double()  # (C', N)
    n_p = n_pos[valid].double()
    auc = ((ranks * pos).sum(-1) - n_p * (n_p + 1) / 2) / (n_p * (n - n_p))
    return auc.mean(-1).cpu().numpy()


def _logits(v: _Variant, x):
    """(B, heads, C) logits of every head of a variant."""
    d, h, c = v.weight.shape
    return (x @ v.weight.reshape(d, h * c)).view(len(x), h, c) + v.bias


def predict(heads: Heads, split: SplitData, chunk: int = 8192) -> np.ndarray:
    """Probabilities of every head: (heads, N, C); softmax for multiclass, sigmoid otherwise."""
    import torch

    x = _standardise(torch.from_numpy(stacked(split).astype(np.float32)).to(heads.stats[0].device), heads.stats)
    return _probs(heads.variants, x, heads.multiclass, heads.normalize, chunk).double().cpu().numpy()


def fit_select(
    inputs: FrozenInputs, train: SplitData, val: SplitData, params: Params, seed: int
) -> Tuple[Heads, int, float]:
    """Train the grid on train, each head until its validation AUROC plateaus, and choose on val:
    (heads at their best epochs, index of the chosen head, its val macro AUROC)."""
    heads = train_heads(inputs, train, head_grid(inputs, train, params), params, seed, val=val)
    val_probs, val_targets = predict(heads, val), label_matrix(inputs, val.labels)
    best, score, _ = select_best(range(len(heads.configs)), lambda i: macro_auroc(val_targets, val_probs[i]))
    return heads, best, score


def epochs_of(heads: Heads, i: int, params: Params) -> Dict[str, object]:
    """What selected records of head i's training."""
    return {"max_epochs": params.epochs, "epochs_trained": int(heads.epochs_run[i]),
            "best_epoch": int(heads.best_epoch[i]), "stopped": heads.stopped[i],
            "lr_drops": [int(e) for e in heads.lr_drops[i]], "stopping_rule": params.rule()}


@register_protocol("linear", task_types=CLASSIFICATION, params=Params)
def run(inputs: FrozenInputs, params: Params, seed: int) -> Prediction:
    train, val = train_val_split(inputs, seed)
    heads, best, val_score = fit_select(inputs, train, val, params, seed)
    config, schedule = heads.configs[best], Schedule.replay(heads, best)
    # Selection is done: retrain the chosen configuration from scratch on train+val for its best
    # epoch count, its learning rate falling after the epochs it fell in selection.
    fit_set = train_plus_val(train, val)
    final = train_heads(inputs, fit_set, [config], params, seed, schedule=schedule)
    selected = {**asdict(config), **epochs_of(heads, best, params), "refit_epochs": schedule.epochs,
                "normalize": params.normalize, "fit_size": len(fit_set)}
    if params.multilabel_loss != "label_sum" or not params.lr_batch_scaling:
        selected.update(multilabel_loss=params.multilabel_loss, lr_batch_scaling=params.lr_batch_scaling)
    return scored(inputs.splits, lambda split: predict(final, split)[0], selected, val_score)
