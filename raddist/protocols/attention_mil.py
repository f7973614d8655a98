"""Attention-MIL: one prediction per volume from its slices' cached features, pooled by learned
attention (gated attention, Ilse et al. 2018) instead of the plain average the frozen protocols see.

Bags: features['slices'] of a volume task (cells.inputs.pooled_volumes: each volume's per-slice
[cls | patch_mean]); on a task of single images every image is a bag of one. The named feature set
(features.py) picks the columns of every slice; they are standardised with the training slices'
statistics. Model: Linear -> ReLU (hidden) -> gated attention over the slices -> linear classifier.
Training: AdamW at a constant learning rate, mini-batches of padded bags, every learning rate of
the grid on the same batches. Loss: cross-entropy (multiclass) or per-label BCE.
Stopping (the rule of linear.py): every `eval_every` epochs each model is scored on validation
(macro AUROC); a model keeps its weights whenever the score is its best so far (the later epoch on a
tie), and stops once the score has not risen by more than `min_delta` for `patience` epochs; `epochs`
is the cap. Each model ends at its best epoch.
Selection: the best validation macro AUROC at the best epoch (ties: the lower learning rate); that
configuration is retrained from scratch on train+val for its best epoch's count of epochs and
scores test once. selected records max_epochs, epochs_trained, best_epoch (= refit_epochs), stopped,
and every learning rate's best epoch.
The reference study has no attention MIL: it averaged the slices' features (cells.inputs' `pool`).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
from pydantic import Field, PositiveFloat, PositiveInt

from raddist.protocols.base import CLASSIFICATION, FrozenInputs, Prediction, SplitData
from raddist.protocols.features import _FEATURE_SETS, FeatureSet, column_range, label_matrix, num_classes
from raddist.protocols.stopping import ModuleGrid, Schedule, Stopping, train_grid
from raddist.protocols.registry import register_protocol
from raddist.protocols.selection import macro_auroc, scored, select_best, train_plus_val, train_val_split

BATCH_ORDER_STREAM = 0xA11  # keeps the batch order's random stream apart from the seed's other uses


class Params(Stopping):
    lrs: List[PositiveFloat] = Field(default=[1e-4, 1e-3, 1e-2], min_length=1)
    features: FeatureSet = "cls_last"
    hidden: PositiveInt = 128
    min_delta: float = Field(default=1e-4, ge=0)  # in validation macro AUROC
    batch_size: PositiveInt = 16  # bags per step
    weight_decay: float = Field(default=1e-4, ge=0)


def bags(inputs: FrozenInputs, split: SplitData, name: str) -> List[np.ndarray]:
    """Each sample's (n_slices, F) matrix of the named feature set, float32."""
    blocks, with_patch = _FEATURE_SETS[name]
    has_patch = "patch_mean" in split.features
    if with_patch and not has_patch:
        raise ValueError(f"features='{name}' needs a 'patch_mean' feature, which this backbone's cache lacks")
    patch_dim = split.features["patch_mean"].shape[1] if has_patch else 0
    a, b = column_range(inputs.block_dims, blocks or len(inputs.block_dims), with_patch, patch_dim)
    if "slices" in split.features:
        return [np.asarray(s[:, a:b], dtype=np.float32) for s in split.features["slices"]]
    stacked = np.concatenate([split.features["cls"]] + ([split.features["patch_mean"]] if has_patch else []), 1)
    return [row[None, a:b].astype(np.float32) for row in stacked]


def _padded(bag_list: List[np.ndarray], idx: np.ndarray, stats) -> Tuple[object, object]:
    """(x (B, S_max, F), mask (B, S_max)) tensors of the bags idx, standardised."""
    import torch

    longest = max(len(bag_list[i]) for i in idx)
    x = np.zeros((len(idx), longest, bag_list[idx[0]].shape[1]), np.float32)
    mask = np.zeros((len(idx), longest), bool)
    for k, i in enumerate(idx):
        x[k, : len(bag_list[i])] = (bag_list[i] - stats[0]) / stats[1]
        mask[k, : len(bag_list[i])] = True
    return torch.from_numpy(x), torch.from_numpy(mask)


def build(width: int, hidden: int, n_out: int):
    import torch
    from torch import nn

    class GatedAttentionMIL(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Sequential(nn.Linear(width, hidden), nn.ReLU())
            self.v, self.u, self.w = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, 1)
            self.classify = nn.Linear(hidden, n_out)

        def forward(self, x, mask):
            h = self.embed(x)
            a = self.w(torch.tanh(self.v(h)) * torch.sigmoid(self.u(h))).squeeze(-1)
            a = torch.softmax(a.masked_fill(~mask, float("-inf")), dim=1)
            return self.classify((a.unsqueeze(-1) * h).sum(1))

    return GatedAttentionMIL()


def fit(bag_list, targets: np.ndarray, lrs: List[float], params: Params, multiclass: bool, seed: int,
        val: Optional[Tuple[list, np.ndarray]] = None, schedule: Optional[Schedule] = None):
    """One model per learning rate, all on the same mini-batches (stopping.train_grid):
    (models, stats, record).

    With val = (bags, targets): each model until its validation AUROC plateaus, at most params.epochs,
    ending at its best epoch's weights. Without: the schedule (default: params.epochs epochs)."""
    import torch

    slices = np.concatenate(bag_list)
    stats = (slices.mean(0), np.where(slices.std(0) < 1e-6, 1.0, slices.std(0)).astype(np.float32))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        models = [build(slices.shape[1], params.hidden, targets.shape[1]) for _ in lrs]
    opts = [torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=params.weight_decay) for m, lr in zip(models, lrs)]
    steps = params.cap(schedule) * max(1, -(-len(bag_list) // params.batch_size))
    scheds = ([torch.optim.lr_scheduler.CosineAnnealingLR(o, steps) for o in opts]
              if params.stopping == "fixed" else [])
    y = torch.from_numpy(targets.argmax(1) if multiclass else targets.astype(np.float32))
    score = None if val is None else (lambda m: macro_auroc(val[1], predict(m, val[0], stats, multiclass)))
    grid = ModuleGrid(models, opts, _epoch_batches(bag_list, y, stats, params.batch_size, seed),
                      _loss_of(multiclass), score, scheds)
    record = train_grid(grid, params, validate=val is not None, schedule=schedule)
    for m in models:
        m.eval()
    return models, stats, record


def _epoch_batches(bag_list, y, stats, batch_size: int, seed: int):
    """A new epoch's (padded bags, mask, targets) mini-batches on each call, in a seeded order."""
    rng = np.random.default_rng([seed, BATCH_ORDER_STREAM])

    def epoch():
        order = rng.permutation(len(bag_list))
        for a in range(0, len(order), batch_size):
            idx = order[a:a + batch_size]
            yield (*_padded(bag_list, idx, stats), y[idx])

    return epoch


def _loss_of(multiclass: bool):
    import torch.nn.functional as F

    loss = F.cross_entropy if multiclass else F.binary_cross_entropy_with_logits
    return lambda model, batch: loss(model(batch[0], batch[1]), batch[2])


def predict(model, bag_list, stats, multiclass: bool, batch_size: int = 64) -> np.ndarray:
    import torch

    out = []
    with torch.inference_mode():
        for a in range(0, len(bag_list), batch_size):
            logits = model(*_padded(bag_list, np.arange(a, min(a + batch_size, len(bag_list))), stats))
            out.append((torch.softmax(logits, 1) if multiclass else torch.sigmoid(logits)).numpy())
    return np.concatenate(out).astype(np.float64)


@register_protocol("attention_mil", task_types=CLASSIFICATION, params=Params)
def run(inputs: FrozenInputs, params: Params, seed: int) -> Prediction:
    multiclass = inputs.task_type == "multiclass"
    train, val = train_val_split(inputs, seed)
    lrs = sorted(set(params.lrs))
    y_train, y_val = label_matrix(inputs, train.labels), label_matrix(inputs, val.labels)
    if num_classes(inputs, train.labels) != y_train.shape[1]:
        raise ValueError("label columns and classes disagree")
    val_bags = bags(inputs, val, params.features)
    models, stats, record = fit(bags(inputs, train, params.features), y_train, lrs, params, multiclass, seed,
                                val=(val_bags, y_val))
    best, val_score, scores = select_best(
        list(range(len(lrs))), lambda i: macro_auroc(y_val, predict(models[i], val_bags, stats, multiclass)))
    schedule = Schedule.replay(record, best)
    refit_epochs = schedule.epochs
    fit_set = train_plus_val(train, val)
    [model], stats, _ = fit(bags(inputs, fit_set, params.features), label_matrix(inputs, fit_set.labels), [lrs[best]],
                            params, multiclass, seed, schedule=schedule)
    selected = {"lr": lrs[best], "features": params.features, "val_auroc": [round(s, 4) for s in scores],
                "max_epochs": params.epochs, "epochs_trained": int(record.epochs_run[best]),
                "best_epoch": refit_epochs, "refit_epochs": refit_epochs, "stopped": record.stopped[best],
                "best_epochs": [int(e) for e in record.best_epoch], "lr_drops": [int(e) for e in record.lr_drops[best]],
                "stopping_rule": params.rule()}
    return scored(inputs.splits, lambda split: predict(model, bags(inputs, split, params.features), stats, multiclass),
                  selected, val_score)
