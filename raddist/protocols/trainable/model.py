"""The trainable classifier: a registered backbone, a linear head, and what of it trains.

    model = build_classifier(spec)                  # spec: ModelSpec.to_dict(), picklable for workers
    logits = model(uint8_images, augment=True)      # normalise -> (augment) -> pooled feature -> head

The pooled feature is the frozen protocols' 'cls' feature of the last block (class token after the
final norm; mean token for SAM; pooled last stage for CNNs), so fine-tuning starts from exactly what
the linear probe reads. Methods:
  finetune  every parameter trains; the checkpoint holds the whole state dict.
  lora      peft LoRA adapters on ``target_modules`` (+ the head, as a peft module to save); the
            checkpoint holds get_peft_model_state_dict only, the base comes back from its weights.
  bitfit    only the bias terms (+ the head); the checkpoint holds those tensors only.
For lora and bitfit, BatchNorm running statistics stay frozen too (frozen means frozen), so the
base rebuilt from its weights plus the saved tensors is the trained model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch

METHODS = ("finetune", "lora", "bitfit")


@dataclass(frozen=True)
class ModelSpec:
    backbone: str
    weights: str
    num_classes: int
    task_type: str  # multilabel | binary | multiclass
    method: str  # one of METHODS
    # method 'lora': r, alpha, dropout, target_modules (raddist.protocols.lora.Params holds the defaults)
    lora: Optional[dict] = None

    def to_dict(self) -> dict:
        return asdict(self)


class Classifier(torch.nn.Module):
    def __init__(self, embedder, num_classes: int):
        super().__init__()
        self.embedder = embedder  # raddist Embedder: uint8 normalisation + the backbone
        self.head = torch.nn.Linear(embedder.block_dims[-1], num_classes)

    def forward(self, images: torch.Tensor, augment: bool = False) -> torch.Tensor:
        from raddist.protocols.trainable.data import augment as random_crop_flip

        x = self.embedder.normalize(images)
        if augment:  # crop and flip are linear in the pixels: augmenting normalised values is the same
            x = random_crop_flip(x)
        return self.head(pooled_feature(self.embedder, x))


def pooled_feature(embedder, x: torch.Tensor) -> torch.Tensor:
    """(B, D) 'cls' feature of the last block, with gradients (Embedder.forward runs in inference mode)."""
    config = embedder.config
    if config.family == "cnn":
        pooled, _ = embedder._cnn(x)
    elif config.has_cls_token:
        pooled, _ = embedder._vit(x)
    else:
        pooled, _ = embedder._vit_without_cls(x)
    return pooled[-1]


def build_classifier(spec: dict) -> torch.nn.Module:
    """The classifier of ``spec`` with its method's parameters trainable; head initialised from torch's RNG."""
    from raddist.backbones.embedder import Embedder
    from raddist.backbones.registry import get_config
    from raddist.backbones.weights import build_model

    spec = ModelSpec(**spec)
    if spec.method not in METHODS:
        raise ValueError(f"unknown training method {spec.method!r}; allowed: {METHODS}")
    config = get_config(spec.backbone)
    model = Classifier(Embedder(config, build_model(config, spec.weights), n_last_blocks=1, patch_mean=False),
                       spec.num_classes)
    if spec.method == "lora":
        return _with_lora(model, spec)
    if spec.method == "bitfit":
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("head.") or name.endswith(".bias"))
    return model


def _with_lora(model: Classifier, spec: ModelSpec) -> torch.nn.Module:
    import peft

    if not spec.lora:
        raise ValueError("method 'lora' needs its settings (r, alpha, dropout, target_modules)")
    targets = list(spec.lora["target_modules"])
    modules = dict(model.embedder.model.named_modules())
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in modules)]
    if missing:
        layers = {n.rsplit(".", 1)[-1] for n, m in modules.items() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
        raise ValueError(
            f"LoRA target modules {missing} do not exist in backbone {spec.backbone!r} "
            f"({model.embedder.config.family}); set lora target_modules to layers it has, e.g. "
            f"{sorted(n for n in layers if not n.isdigit())[:8]}"
        )
    config = peft.LoraConfig(r=spec.lora["r"], lora_alpha=spec.lora["alpha"], lora_dropout=spec.lora["dropout"],
                             target_modules=targets, modules_to_save=["head"], bias="none")
    return peft.get_peft_model(model, config)


def trainable_parameters(model: torch.nn.Module) -> List[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def freeze_norm_statistics(model: torch.nn.Module, method: str) -> None:
    """After model.train(): for lora/bitfit keep BatchNorm running statistics as loaded."""
    if method != "finetune":
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()


def trainable_state(model: torch.nn.Module, method: str) -> Dict[str, torch.Tensor]:
    """What a checkpoint must hold to rebuild the trained model from the base weights."""
    if method == "lora":
        import peft

        state = peft.get_peft_model_state_dict(model)
    elif method == "bitfit":
        state = {n: p for n, p in model.named_parameters() if p.requires_grad}
    else:
        state = model.state_dict()
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def load_trainable_state(model: torch.nn.Module, method: str, state: Dict[str, torch.Tensor]) -> None:
    if method == "lora":
        import peft

        result = peft.set_peft_model_state_dict(model, state)
        if result.unexpected_keys:
            raise KeyError(f"checkpoint tensors the model lacks: {result.unexpected_keys[:5]}")
        return
    if method == "bitfit":
        unknown = set(state) - {n for n, _ in model.named_parameters()}
        if unknown:
            raise KeyError(f"checkpoint tensors the model lacks: {sorted(unknown)[:5]}")
        model.load_state_dict(state, strict=False)
        return
    model.load_state_dict(state, strict=True)


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
