"""The trainable classifier: a registered backbone, a linear head, and what of it trains.

    model = build_classifier(spec)                  # spec: ModelSpec, picklable for workers
    logits = model(uint8_images, augment=True)      # normalise -> (augment) -> pooled feature -> head

The pooled feature is the frozen protocols' 'cls' feature of the last block (Embedder.pooled: class
token after the final norm; mean token for SAM; pooled last stage for CNNs), so fine-tuning starts
from exactly what the linear probe reads. A spec with `heads` (the reference's grid, TrainParams.
head_grid) trains several linear heads at once on one backbone, each on the class tokens of the last
n blocks, with or without the mean patch token, at its own learning rate: the losses add up, the
model outputs (B, heads, C), and a spec with `head` chosen outputs that head's (B, C). What trains,
how the model is wrapped and what a checkpoint holds is the spec's method
(raddist.protocols.trainable.method.Method), which each trainable protocol defines: finetune.py,
lora.py, bitfit.py, dora.py.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, List, Optional, Tuple

import numpy as np
import torch

from raddist.protocols.trainable.method import Method


@dataclass(frozen=True)
class ModelSpec:
    backbone: str
    weights: str
    num_classes: int
    task_type: str  # multilabel | binary | multiclass
    method: Method  # which parameters train, how the model is wrapped, what a checkpoint keeps
    heads: Tuple[Tuple[int, bool, float], ...] = ()  # (last blocks, with patch mean, lr) per head; (): one head
    head: Optional[int] = None  # of heads: the one the model outputs (None: all of them)

    def randomly_initialised(self) -> "ModelSpec":
        return replace(self, weights="random")


class HeadGrid(torch.nn.Module):
    """Linear heads side by side, each on the class tokens of its last n blocks (+ the last block's
    mean patch token): the reference's linear-classifier grid (its create_linear_input)."""

    def __init__(self, embedder, heads: Tuple[Tuple[int, bool, float], ...], num_classes: int):
        super().__init__()
        self.heads = tuple((int(n), bool(pool)) for n, pool, _ in heads)
        width = embedder.config.embed_dim
        self.linears = torch.nn.ModuleList(
            torch.nn.Linear(sum(embedder.block_dims[-n:]) + (width if pool else 0), num_classes) for n, pool in self.heads)

    def forward(self, pooled: List[torch.Tensor], grids: List[torch.Tensor]) -> torch.Tensor:
        patch_mean = grids[-1].mean(dim=(2, 3)) if any(pool for _, pool in self.heads) else None
        outs = [linear(torch.cat(pooled[-n:] + ([patch_mean] if pool else []), dim=1))
                for (n, pool), linear in zip(self.heads, self.linears)]
        return torch.stack(outs, dim=1)


class Classifier(torch.nn.Module):
    def __init__(self, embedder, num_classes: int, heads: Tuple[Tuple[int, bool, float], ...] = (),
                 head: Optional[int] = None):
        super().__init__()
        self.embedder = embedder  # raddist Embedder: uint8 normalisation + the backbone
        self.head = HeadGrid(embedder, heads, num_classes) if heads else torch.nn.Linear(embedder.block_dims[-1],
                                                                                         num_classes)
        self.grid = bool(heads)  # (not isinstance: peft wraps a head it saves)
        self.chosen = head

    def inputs(self, images: torch.Tensor, augment: bool = False) -> torch.Tensor:
        """uint8 images -> the normalised float batch the backbone reads, randomly cropped and flipped
        if augment (crop and flip are linear in the pixels: augmenting normalised values is the same)."""
        from raddist.protocols.trainable.data import augment as random_crop_flip

        x = self.embedder.normalize(images)
        return random_crop_flip(x) if augment else x

    def forward(self, images: torch.Tensor, augment: bool = False) -> torch.Tensor:
        """Logits of uint8 images, or of float inputs already through ``inputs``."""
        x = self.inputs(images, augment) if images.dtype == torch.uint8 else images
        if not self.grid:
            return self.head(self.embedder.pooled(x))
        logits = self.head(*self.embedder.block_features(x))
        return logits if self.chosen is None else logits[:, self.chosen]


def classifier_of(model: torch.nn.Module) -> Classifier:
    """The Classifier inside a wrapped model (peft, DDP, FSDP)."""
    for m in model.modules():
        if isinstance(m, Classifier):
            return m
    raise TypeError(f"no Classifier in {type(model).__name__}")


def build_classifier(spec: ModelSpec) -> torch.nn.Module:
    """The classifier of ``spec`` with its method's parameters trainable; head initialised from torch's RNG."""
    from raddist.backbones.embedder import Embedder
    from raddist.backbones.registry import get_config
    from raddist.backbones.weights import build_model

    config = get_config(spec.backbone)
    blocks = max([n for n, _, _ in spec.heads] or [1])
    model = Classifier(Embedder(config, build_model(config, spec.weights), n_last_blocks=blocks, patch_mean=False),
                       spec.num_classes, spec.heads, spec.head)
    return spec.method.wrap(model, spec.backbone)


def head_grid(config, lrs, blocks, avgpool) -> Tuple[Tuple[int, bool, float], ...]:
    """The heads of a grid on a backbone (a registry config): blocks x avgpool x lrs, in the reference's
    order. As the reference: a CNN takes its final pooled feature only; so does a ViT without a class
    token (its 'cls' is already a mean of tokens)."""
    if config.family == "cnn" or not config.has_patch_mean:
        blocks, avgpool = [1], [False]
    return tuple((min(int(n), config.num_blocks), bool(pool), float(lr))
                 for n in blocks for pool in avgpool for lr in lrs)


def optimizer(model: torch.nn.Module, name: str, lr: float, weight_decay: float, heads=()):
    """AdamW, or SGD with momentum 0.9 (the reference's), over the trainable parameters: each head of a
    grid at its own learning rate, everything else (the backbone's trainable part) at lr."""
    import re

    groups = {i: [] for i in range(len(heads))}
    rest = []
    for pname, p in model.named_parameters():
        if not p.requires_grad:
            continue
        found = re.search(r"(?:^|\.)linears\.(\d+)\.", pname) if heads else None
        (groups[int(found.group(1))] if found else rest).append(p)
    params = ([{"params": rest, "lr": lr}] if rest else []) + [
        {"params": ps, "lr": heads[i][2]} for i, ps in groups.items() if ps]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def set_grad_checkpointing(model: torch.nn.Module, enable: bool = True) -> None:
    """timm's activation checkpointing on the backbone: blocks recompute their activations in backward."""
    classifier_of(model).embedder.model.set_grad_checkpointing(enable)


def trainable_parameters(model: torch.nn.Module) -> List[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def probabilities(logits: torch.Tensor, task_type: str) -> torch.Tensor:
    return logits.softmax(-1) if task_type == "multiclass" else logits.sigmoid()


def loss_fn(logits: torch.Tensor, labels: torch.Tensor, task_type: str) -> torch.Tensor:
    """Cross-entropy for multiclass; BCE summed over labels, mean over images (as the linear probe)."""
    import torch.nn.functional as F

    if logits.dim() == 3:  # a grid of heads: their losses add up (the reference's sum over classifiers)
        return sum(loss_fn(logits[:, h], labels, task_type) for h in range(logits.shape[1]))
    if task_type == "multiclass":
        return F.cross_entropy(logits, labels.long())
    return F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none").sum(1).mean()


@torch.no_grad()
def predict(model: torch.nn.Module, batches: Iterable[dict], task_type: str, device) -> Tuple[np.ndarray, np.ndarray]:
    """(row indices, probabilities (N, C) float64; (N, heads, C) for a grid of heads) over batches of
    {'index', 'image'}; eval mode, bf16 autocast on GPU -- the same code scores validation in training
    and test after a reload."""
    model.eval()
    indices, probs = [], []
    for batch in batches:
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=torch.device(device).type == "cuda"):
            logits = model(batch["image"].to(device))
        probs.append(probabilities(logits.float(), task_type).double().cpu().numpy())
        indices.append(np.asarray(batch["index"].cpu() if torch.is_tensor(batch["index"]) else batch["index"]))
    if not probs:
        return np.zeros(0, np.int64), np.zeros((0, 0))
    return np.concatenate(indices).astype(np.int64), np.concatenate(probs)
