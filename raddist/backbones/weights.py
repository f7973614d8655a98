"""Build a registered backbone with its weights: from the hub, random, or a local / s3:// file.

``weights`` is one of:
  "hub"     the published pretrained weights (timm pretrained=True, open_clip, transformers).
  "random"  random init, deterministic (seeded) so two builds are equal.
  a URI     a .safetensors / .pth / .pt / .bin file, local, file:// or remote (s3://, gs://).

The module returned exposes timm's ``forward_intermediates`` for every source (open_clip gives its
timm trunk; transformers models are wrapped in ``HFViTAdapter``), so ``Embedder`` treats all alike.
ViTs are built with ``num_classes=0``: classifier / projection heads are dropped.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from typing import Dict, Optional

import torch

from raddist import storage
from raddist.backbones.hf_adapter import HFViTAdapter
from raddist.backbones.registry import BackboneConfig
from raddist.errors import ConfigError

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
RANDOM_SEED = 0
# Key prefixes a checkpoint may carry around the module we build (full open_clip model, HF
# classification model, our own adapter).
_KNOWN_PREFIXES = ("", "visual.trunk.", "vit.", "model.", "module.")


def build_model(config: BackboneConfig, weights: str = "random") -> torch.nn.Module:
    """The backbone of ``config`` with ``weights``, in eval mode, on the current default device."""
    kind = _weights_kind(weights)
    if kind == "file":
        with _local_copy(weights) as path:
            model = _build(config, "file", path)
    else:
        model = _build(config, kind, None)
    return model.eval()


def check_loadable(weights: str) -> None:
    """Open a local weights file the way build_model will, without building anything: a safetensors
    header, or a pickle through torch's weights_only unpickler (which refuses any object that is not a
    tensor or a container of them, so a checkpoint carrying code is refused here, not in an actor).
    Remote files are checked for existence only (raddist.keys.weights_identity): fetching gigabytes to check is
    the actors' job."""
    if _weights_kind(weights) != "file" or storage.is_remote(weights):
        return
    path = storage.normalize(weights)
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, framework="pt"):
            return
    import warnings
    import zipfile

    with warnings.catch_warnings():  # torch explains a refusal at length; the caller says it in one line
        warnings.simplefilter("ignore")
        torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))


def _weights_kind(weights: str) -> str:
    weights = str(weights)
    if weights in ("hub", "random"):
        return weights
    if weights.lower().endswith(WEIGHT_SUFFIXES):
        return "file"
    raise ConfigError(
        f"weights {weights!r}: expected 'hub', 'random', or a path/URI ending in {', '.join(WEIGHT_SUFFIXES)}"
    )


@contextmanager
def _local_copy(uri: str):
    """A local path for ``uri``; remote files are downloaded to a temporary directory first."""
    if not storage.is_remote(uri):
        path = storage.normalize(uri)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"weights file not found: {uri}")
        yield path
        return
    data = storage.read_bytes(uri)
    with tempfile.TemporaryDirectory(prefix="raddist-weights-") as tmp:
        path = os.path.join(tmp, os.path.basename(uri.rstrip("/")))  # keeps the suffix timm dispatches on
        with open(path, "wb") as f:
            f.write(data)
        del data
        yield path


@contextmanager
def _seeded():
    """Seed torch for a deterministic init without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        yield


def _build(config: BackboneConfig, kind: str, path: Optional[str]) -> torch.nn.Module:
    if config.source == "timm":
        return _build_timm(config, kind, path)
    if config.source == "open_clip":
        return _build_open_clip(config, kind, path)
    if config.source == "transformers":
        return _build_transformers(config, kind, path)
    if config.source == "python":
        from raddist.backbones.custom import build_python

        return build_python(config, kind, path)
    raise ValueError(f"{config.name}: unknown source {config.source!r}")


def _build_timm(config: BackboneConfig, kind: str, path: Optional[str]) -> torch.nn.Module:
    import timm

    kwargs = dict(num_classes=0, **config.kwargs)
    if kind == "random":
        with _seeded():
            return timm.create_model(config.model_id, pretrained=False, **kwargs)
    if kind == "hub":
        return timm.create_model(config.model_id, pretrained=True, **kwargs)
    # A file goes through timm's own loader, so its checkpoint filters apply (key remapping,
    # position-embedding resampling). Declaring the file headless (num_classes=0) keeps timm's load
    # strict; only a checkpoint that carries a classifier falls back to timm dropping it, and timm
    # then loads non-strictly.
    with _seeded():
        try:
            return timm.create_model(
                config.model_id, pretrained=True, pretrained_cfg_overlay=dict(file=path, num_classes=0), **kwargs
            )
        except RuntimeError as e:
            if "Unexpected key" not in str(e):
                raise
            return timm.create_model(config.model_id, pretrained=True, pretrained_cfg_overlay=dict(file=path), **kwargs)


def _build_open_clip(config: BackboneConfig, kind: str, path: Optional[str]) -> torch.nn.Module:
    if kind == "hub":
        try:
            import open_clip
        except ImportError:
            raise ImportError(
                f"backbone {config.name!r} with weights='hub' needs open_clip: pip install open_clip_torch"
            ) from None
        model_name, _, pretrained = config.model_id.partition(":") if not config.model_id.startswith("hf-hub:") \
            else (config.model_id, "", "")
        model = open_clip.create_model(model_name, pretrained=pretrained or None)  # open_clip:<name>:<pretrained>
        trunk = getattr(model.visual, "trunk", None)
        if trunk is None:
            raise TypeError(f"{config.name}: open_clip vision tower has no timm trunk")
        return any_size(trunk) if config.kwargs.get("dynamic_img_size") else trunk
    # Random init and file weights need only the timm trunk, not open_clip.
    import timm

    with _seeded():
        model = timm.create_model(config.timm_arch, pretrained=False, num_classes=0, **config.kwargs)
    if kind == "file":
        _load_file_into(model, path)
    return model


def _build_transformers(config: BackboneConfig, kind: str, path: Optional[str]) -> torch.nn.Module:
    import transformers

    if kind == "hub":
        model = transformers.AutoModel.from_pretrained(config.model_id, revision=config.revision)
        return HFViTAdapter(getattr(model, "vision_model", model))  # SiglipModel: its vision tower
    hf_kwargs = dict(config.kwargs)
    hf_config = transformers.AutoConfig.for_model(hf_kwargs.pop("model_type"), **hf_kwargs)
    with _seeded():
        model = HFViTAdapter(transformers.AutoModel.from_config(hf_config))
    if kind == "file":
        _load_file_into(model.model, path)  # accepts the adapter's keys ("model.") and raw HF ones
    return model


def any_size(vit: torch.nn.Module) -> torch.nn.Module:
    """A timm ViT built elsewhere (open_clip builds its trunk at one size) switched to what timm's
    ``dynamic_img_size=True`` builds: the patch embedding leaves the grid unflattened and unchecked,
    and the position embeddings are interpolated to each input's grid (unchanged at the built size)."""
    from timm.layers import Format

    embed = vit.patch_embed
    vit.dynamic_img_size = True
    embed.strict_img_size, embed.flatten, embed.output_fmt = False, False, Format.NHWC
    return vit


def _load_file_into(model: torch.nn.Module, path: str) -> None:
    """Load a checkpoint strictly, after stripping whichever known prefix makes its keys fit."""
    from timm.models import load_state_dict  # handles .safetensors, 'state_dict'/'model' wrappers

    state_dict = load_state_dict(path)
    wanted = set(model.state_dict())
    best: Dict[str, torch.Tensor] = {}
    for prefix in _KNOWN_PREFIXES:
        candidate = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if len(wanted & set(candidate)) > len(wanted & set(best)):
            best = candidate
    if not best:
        raise ValueError(f"{path}: no tensor in the checkpoint matches the model's parameter names")
    # Extra tensors (a classifier or projection head we dropped) are ignored; missing ones raise.
    model.load_state_dict({k: v for k, v in best.items() if k in wanted}, strict=True)
