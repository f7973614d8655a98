"""The trainable classifier: a registered backbone, a linear head, and what of it trains.

    model = build_classifier(spec)                  # spec: ModelSpec, picklable for workers
    logits = model(uint8_images, augment=True)      # normalise -> (augment) -> pooled feature -> head

The pooled feature is the frozen protocols' 'cls' feature of the last block (Embedder.pooled: class
token after the final norm; mean token for SAM; pooled last stage for CNNs), so fine-tuning starts
from exactly what the linear probe reads. What trains, how the model is wrapped and what a
checkpoint holds is the spec's method (raddist.protocols.trainable.method.Method), which each
trainable protocol defines: finetune.py, lora.py, bitfit.py, dora.py.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, List, Tuple

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

    def randomly_initialised(self) -> "ModelSpec":
        return replace(self, weights="random")


class Classifier(torch.nn.Module):
    def __init__(self, embedder, num_classes: int):
        super().__init__()
        self.embedder = embedder  # raddist Embedder: uint8 normalisation + the backbone
        self.head = torch.nn.Linear(embedder.block_dims[-1], num_classes)

    def inputs(self, images: torch.Tensor, augment: bool = False) -> torch.Tensor:
        """uint8 images -> the normalised float batch the backbone reads, randomly cropped and flipped
        if augment (crop and flip are linear in the pixels: augmenting normalised values is the same)."""
        from raddist.protocols.trainable.data import augment as random_crop_flip

        x = self.embedder.normalize(images)
        return random_crop_flip(x) if augment else x

    def forward(self, images: torch.Tensor, augment: bool = False) -> torch.Tensor:
        """Logits of uint8 images, or of float inputs already through ``inputs``."""
        x = self.inputs(images, augment) if images.dtype == torch.uint8 else images
        return self.head(self.embedder.pooled(x))


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
    model = Classifier(Embedder(config, build_model(config, spec.weights), n_last_blocks=1, patch_mean=False),
                       spec.num_classes)
    return spec.method.wrap(model, spec.backbone)


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

    if task_type == "multiclass":
        return F.cross_entropy(logits, labels.long())
    return F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none").sum(1).mean()


@torch.no_grad()
def predict(model: torch.nn.Module, batches: Iterable[dict], task_type: str, device) -> Tuple[np.ndarray, np.ndarray]:
    """(row indices, probabilities (N, C) float64) over batches of {'index', 'image'}; eval mode,
    bf16 autocast on GPU -- the same code scores validation in training and test after a reload."""
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
