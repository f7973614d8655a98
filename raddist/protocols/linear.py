"""Linear probes: a whole grid of heads trained together, in one pass over frozen features.

The idea of dinov2's eval/linear.py: every (learning rate x feature variant) head sees the same
shuffled mini-batches of features held in memory, so the grid costs one pass, not one per head.
Feature variants: the class tokens of the last 1 or 4 blocks, with or without the mean patch token;
each is a contiguous column range of one [cls | patch_mean] matrix (features.py), and the heads of
one variant are one weight tensor (D, heads, C) applied with a single matrix product.

Training: SGD, momentum 0.9, no weight decay, cosine decay per step, fixed epochs; dinov2's rule
lr x batch_size / 256. Loss: cross-entropy for multiclass, one-logit-per-label BCE for multilabel and
binary (summed over labels, so every label learns at the same rate as a CE head).
Inputs are standardised with the mean and std of the set the head is fitted on (comparable learning
rates across backbones whose features differ in scale), or, with normalize='l2', scaled per sample
to norm sqrt(D), which needs no statistics (few-shot sets are too small to estimate them).

Selection: the head with the best VALIDATION macro AUROC (ties: lower lr, then fewer blocks, then
CLS alone); that one configuration is retrained from scratch on train+val and scores test once.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, List, Literal, Tuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt

from raddist.protocols.base import CLASSIFICATION, FrozenInputs, Prediction, SplitData
from raddist.protocols.features import column_range, has_patch_mean, label_matrix, num_classes, stacked
from raddist.protocols.registry import register_protocol
from raddist.protocols.selection import macro_auroc, select_best, to_prediction, train_plus_val, train_val_split

Pool = Literal["cls", "cls_patch"]


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lrs: List[PositiveFloat] = Field(default=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1], min_length=1)
    blocks: List[PositiveInt] = Field(default=[1, 4], min_length=1)  # clipped to the cached blocks
    pools: List[Pool] = Field(default=["cls", "cls_patch"], min_length=1)  # cls_patch needs patch_mean
    epochs: PositiveInt = 20
    batch_size: PositiveInt = 256
    momentum: float = Field(default=0.9, ge=0, lt=1)
    normalize: Literal["standard", "l2"] = "standard"


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
    """A trained grid: configs[i] is head i; loss[i, e] its mean training loss in epoch e."""

    configs: List[HeadConfig]
    variants: List[_Variant]
    stats: tuple  # (mean, scale) tensors of the fitting set's columns
    multiclass: bool
    normalize: str
    loss: np.ndarray


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
    """(mean, scale) per column of the fitting set; identity for 'l2', which scales per sample instead."""
    if normalize == "l2":
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
        lr = torch.tensor([configs[i].lr * params.batch_size / 256 for i in idx], device=device)  # dinov2's scaling
        variants.append(_Variant(cols, idx, weight, bias, lr))
    return variants


def train_heads(
    inputs: FrozenInputs, split: SplitData, configs: List[HeadConfig], params: Params, seed: int
) -> Heads:
    """Train every head of configs on split at once, from a seeded initialisation and batch order."""
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
    momenta = {id(p): torch.zeros_like(p) for v in variants for p in (v.weight, v.bias)}

    batch_order = torch.Generator().manual_seed(seed)
    n, batch = len(x), min(params.batch_size, len(x))
    total_steps, step = params.epochs * math.ceil(n / batch), 0
    history = np.zeros((len(configs), params.epochs))
    for epoch in range(params.epochs):
        epoch_loss = torch.zeros(len(configs), device=device)  # summed on the device: no sync per step
        order = torch.randperm(n, generator=batch_order).to(device)
        for start in range(0, n, batch):
            rows = order[start : start + batch]
            xb, yb, total = x[rows], y[rows], 0.0
            for v in variants:
                losses = _loss(_logits(v, _prepare(xb, v.cols, params.normalize)), yb, multiclass)
                total = total + losses.sum()  # heads share no parameters: each gets its own gradient
                epoch_loss[v.heads] += losses.detach() * len(rows) / n
                v.weight.grad = v.bias.grad = None
            total.backward()
            decay = 0.5 * (1 + math.cos(math.pi * step / total_steps))
            with torch.no_grad():  # SGD with momentum, one learning rate per head
                for v in variants:
                    for p, shape in ((v.weight, (1, -1, 1)), (v.bias, (-1, 1))):
                        buf = momenta[id(p)].mul_(params.momentum).add_(p.grad)
                        p.sub_(v.lr.view(shape) * decay * buf)
            step += 1
        history[:, epoch] = epoch_loss.cpu().numpy()
    return Heads(configs, variants, stats, multiclass, params.normalize, history)


def _logits(v: _Variant, x):
    """(B, heads, C) logits of every head of a variant."""
    d, h, c = v.weight.shape
    return (x @ v.weight.reshape(d, h * c)).view(len(x), h, c) + v.bias


def predict(heads: Heads, split: SplitData, chunk: int = 8192) -> np.ndarray:
    """Probabilities of every head: (heads, N, C); softmax for multiclass, sigmoid otherwise."""
    import torch

    x_all = stacked(split).astype(np.float32)
    out = np.zeros((len(heads.configs), len(x_all), heads.variants[0].weight.shape[2]))  # (heads, N, C)
    with torch.no_grad():
        for start in range(0, len(x_all), chunk):
            xb = _standardise(torch.from_numpy(x_all[start : start + chunk]).to(heads.stats[0].device), heads.stats)
            for v in heads.variants:
                logits = _logits(v, _prepare(xb, v.cols, heads.normalize))
                probs = logits.softmax(-1) if heads.multiclass else logits.sigmoid()
                out[v.heads, start : start + chunk] = probs.transpose(0, 1).double().cpu().numpy()
    return out


def fit_select(
    inputs: FrozenInputs, train: SplitData, val: SplitData, params: Params, seed: int
) -> Tuple[Heads, int, float]:
    """Train the grid on train, choose on val: (heads, index of the chosen head, its val macro AUROC)."""
    heads = train_heads(inputs, train, head_grid(inputs, train, params), params, seed)
    val_probs, val_targets = predict(heads, val), label_matrix(inputs, val.labels)
    best, score, _ = select_best(range(len(heads.configs)), lambda i: macro_auroc(val_targets, val_probs[i]))
    return heads, best, score


@register_protocol("linear", task_types=CLASSIFICATION, params=Params)
def run(inputs: FrozenInputs, params: Params, seed: int) -> Prediction:
    train, val = train_val_split(inputs, seed)
    test = inputs.splits["test"]
    heads, best, val_score = fit_select(inputs, train, val, params, seed)
    config = heads.configs[best]
    # Selection is done: retrain the chosen configuration from scratch on train+val, score test once.
    fit_set = train_plus_val(train, val)
    final = train_heads(inputs, fit_set, [config], params, seed)
    selected = {**asdict(config), "epochs": params.epochs, "normalize": params.normalize, "fit_size": len(fit_set)}
    return to_prediction(test, predict(final, test)[0], selected, val_score)
