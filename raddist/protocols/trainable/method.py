"""A training method: which parameters of the classifier train, how the model is wrapped, and what a
checkpoint keeps. Each trainable protocol owns one (protocols/finetune.py, lora.py, bitfit.py,
dora.py); the training code only calls these methods, so a new method is one new file.

    Method            the base: parameters chosen by name (``trains``), the head always trains;
                      the checkpoint holds the trained tensors only; BatchNorm statistics frozen.
    PeftMethod        a peft adapter (``peft_config``) on the backbone, the head as a module to save;
                      the checkpoint holds get_peft_model_state_dict.

Method objects are small frozen dataclasses: they travel to the Ray Train workers inside the
training config, and their fields (e.g. LoRA's rank) are the method's settings.
Torch and peft are imported lazily: planning imports the protocol modules that define methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Dict, Optional, Sequence

HEAD = "head."
FSDP_PREFIX = "_fsdp_wrapped_module."


def unwrapped_name(name: str) -> str:
    """A parameter's name as the unwrapped model spells it (FSDP with use_orig_params inserts a prefix)."""
    return name.replace(FSDP_PREFIX, "")


@dataclass(frozen=True)
class Method:
    name: ClassVar[str] = ""
    # True: the whole model trains, BatchNorm statistics included, and the checkpoint is the state dict
    full: ClassVar[bool] = False

    def trains(self, parameter_name: str) -> bool:
        """Whether a backbone parameter (its name under the classifier) trains; the head always does."""
        raise NotImplementedError

    def wrap(self, model, backbone: str):
        """The classifier with this method's parameters trainable (and any adapter applied)."""
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(HEAD) or self.trains(name))
        return model

    def freeze_norm_statistics(self, model) -> None:
        """After model.train(): a frozen backbone keeps its BatchNorm running statistics as loaded."""
        import torch

        if self.full:
            return
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()

    def state(self, model, state_dict: Optional[Dict] = None) -> Dict:
        """What a checkpoint must hold to rebuild the trained model from the base weights.
        state_dict: the model's full state when it was gathered elsewhere (FSDP), else model.state_dict()."""
        state = model.state_dict() if state_dict is None else state_dict
        if not self.full:
            trained = {unwrapped_name(n) for n, p in model.named_parameters() if p.requires_grad}
            state = {k: v for k, v in state.items() if k in trained}
        return {k: v.detach().cpu().clone() for k, v in state.items()}

    def load(self, model, state: Dict) -> None:
        if self.full:
            model.load_state_dict(state, strict=True)
            return
        unknown = set(state) - {n for n, _ in model.named_parameters()}
        if unknown:
            raise KeyError(f"checkpoint tensors the model lacks: {sorted(unknown)[:5]}")
        model.load_state_dict(state, strict=False)


@dataclass(frozen=True)
class PeftMethod(Method):
    """An adapter from peft on ``target_modules`` of the backbone (+ the head, trained in full)."""

    target_modules: Sequence[str] = ()

    def peft_config(self):
        raise NotImplementedError

    def wrap(self, model, backbone: str):
        import peft

        check_targets(model, backbone, list(self.target_modules), self.name)
        return peft.get_peft_model(model, self.peft_config())

    def state(self, model, state_dict: Optional[Dict] = None) -> Dict:
        import peft

        state = peft.get_peft_model_state_dict(model, state_dict=state_dict)
        return {k: v.detach().cpu().clone() for k, v in state.items()}

    def load(self, model, state: Dict) -> None:
        import peft

        result = peft.set_peft_model_state_dict(model, state)
        if result.unexpected_keys:
            raise KeyError(f"checkpoint tensors the model lacks: {result.unexpected_keys[:5]}")


def check_targets(model, backbone: str, targets: Sequence[str], method: str) -> None:
    """Refuse, naming them, adapter targets the backbone does not have (e.g. qkv on a CNN)."""
    import torch

    modules = dict(model.embedder.model.named_modules())
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in modules)]
    if missing:
        layers = {n.rsplit(".", 1)[-1] for n, m in modules.items() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
        raise ValueError(
            f"{method} target modules {missing} do not exist in backbone {backbone!r} "
            f"({model.embedder.config.family}); set target_modules to layers it has, e.g. "
            f"{sorted(n for n in layers if not n.isdigit())[:8]}"
        )
