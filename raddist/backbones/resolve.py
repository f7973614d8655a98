"""Backbones by name, without a registry entry: ``timm:<name>``, ``hf:<org>/<id>[@revision]`` (or
``hf:<local directory>``), ``open_clip:<name>[:<pretrained>]`` and ``python:<module>:<callable>``.

Each name resolves, once per process, to a ``BackboneConfig`` that is registered under the name as
written, so everything downstream (plan, check, the embedding actors) treats it as a registry entry.
The contract (size, mean, std) comes from the model's own config where it has one: timm's pretrained
cfg, the Hugging Face ``preprocessor_config.json``, open_clip's pretrained cfg; a ``python:`` callable
declares it (``backbone(...)`` below). A name that cannot be resolved, or a contract that is
incomplete, is one ``ConfigError`` naming the backbone and what is missing.

Torch-free except where a library holds the facts: ``hf:`` and ``python:`` read JSON / a declared dict;
``timm:`` and ``open_clip:`` import their library and build the model on the meta device (no memory,
no weights) for its widths and depth.
"""

from __future__ import annotations

import importlib
import json
import os
from typing import Callable, Dict, List, Optional, Tuple

from raddist.backbones.registry import ANY_SIZE, CLIP_MEAN, CLIP_STD, BackboneConfig, add_resolver, register
from raddist.errors import ConfigError

PREFIXES = ("timm", "hf", "open_clip", "python")
CONTRACT_KEYS = ("size", "mean", "std", "patch_size", "embed_dim", "depth")
# a python: backbone's optional keys: tokens before the patch tokens, whether prefix 0 is a class token
CONTRACT_OPTIONAL = {"prefix_tokens": 1, "cls_token": True, "license": "", "gated": False, "notes": ""}


def backbone(**contract) -> Callable:
    """Declare a ``python:`` backbone's contract on its factory::

        @backbone(size=224, mean=(0.5,) * 3, std=(0.5,) * 3, patch_size=16, embed_dim=384, depth=12,
                  prefix_tokens=1, cls_token=True, license="mit")
        def my_vit(pretrained: bool = False) -> torch.nn.Module: ...

    The factory returns a module whose forward gives every block's tokens, a list of (B, P + h*w, D)
    (P = prefix_tokens: a class token first when cls_token, then any registers), or a module with
    timm's ``forward_intermediates``. An optional ``norm`` attribute is its final norm."""
    def mark(fn):
        fn.raddist_contract = dict(contract)
        return fn
    return mark


def _error(name: str, what: str) -> ConfigError:
    return ConfigError(f"backbone {name!r}: {what}")


def _triple(name: str, key: str, value) -> Tuple[float, float, float]:
    values = [float(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or (key == "std" and min(values) <= 0):
        raise _error(name, f"{key} must be 3 numbers{' above 0' if key == 'std' else ''}, got {value!r}")
    return tuple(values)


# --- python:<module>:<callable> -------------------------------------------------------------------

def resolve_python(name: str, ref: str) -> BackboneConfig:
    module_name, _, attr = ref.rpartition(":")
    if not module_name or not attr:
        raise _error(name, "expected python:<module>:<callable>")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise _error(name, f"cannot import {attr} from {module_name} ({type(e).__name__}: {e})") from None
    contract = getattr(fn, "raddist_contract", None)
    if not isinstance(contract, dict):
        raise _error(name, f"{module_name}.{attr} declares no contract; decorate it with "
                           f"raddist.backbones.resolve.backbone({', '.join(CONTRACT_KEYS)}=...)")
    missing = [k for k in CONTRACT_KEYS if contract.get(k) is None]
    unknown = sorted(set(contract) - set(CONTRACT_KEYS) - set(CONTRACT_OPTIONAL))
    if missing or unknown:
        raise _error(name, f"contract {'misses ' + str(missing) if missing else ''}"
                           f"{'; ' if missing and unknown else ''}{'has unknown keys ' + str(unknown) if unknown else ''}; "
                           f"a python: backbone declares {', '.join(CONTRACT_KEYS)}")
    c = {**CONTRACT_OPTIONAL, **contract}
    for key in ("size", "patch_size", "embed_dim", "depth"):
        if not isinstance(c[key], int) or c[key] < 1:
            raise _error(name, f"contract {key} must be a positive integer, got {c[key]!r}")
    if c["size"] % c["patch_size"]:
        raise _error(name, f"contract size {c['size']} is not a multiple of its patch_size {c['patch_size']}")
    return BackboneConfig(name, "python", ref, c["size"], _triple(name, "mean", c["mean"]), _triple(name, "std", c["std"]),
                          c["patch_size"], c["embed_dim"], c["depth"], "vit", kwargs={"prefix_tokens": c["prefix_tokens"]},
                          has_cls_token=bool(c["cls_token"]), license=c["license"], gated=bool(c["gated"]),
                          notes=c["notes"] or f"python: {ref}")


# --- hf:<org>/<id>[@revision] or hf:<directory> --------------------------------------------------

VISION_TOWERS = {"siglip": "siglip_vision_model", "clip": "clip_vision_model", "siglip2": "siglip2_vision_model"}


def _hf_files(name: str, ref: str) -> Tuple[str, Optional[str], Dict[str, dict]]:
    """(model id, revision, {file: json}) of config.json and preprocessor_config.json."""
    if os.path.isdir(ref):
        where, revision, found = os.path.abspath(ref), None, {}
        for f in ("config.json", "preprocessor_config.json"):
            path = os.path.join(where, f)
            if not os.path.isfile(path):
                raise _error(name, f"{path} is missing: the contract is read from config.json and "
                                   "preprocessor_config.json")
            with open(path) as fh:
                found[f] = json.load(fh)
        return where, revision, found
    repo, _, revision = ref.partition("@")
    if repo.count("/") != 1:
        raise _error(name, "expected hf:<org>/<id>[@revision] or hf:<local directory with config.json>")
    import huggingface_hub as hf

    found = {}
    for f in ("config.json", "preprocessor_config.json"):
        try:
            with open(hf.hf_hub_download(repo, f, revision=revision or None)) as fh:
                found[f] = json.load(fh)
        except Exception as e:  # noqa: BLE001 - unreachable, gated, unknown: one line
            text = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            raise _error(name, f"cannot read {f} of {repo} from the hub or its cache ({type(e).__name__}: {text}); "
                               "download it where there is a network, or give hf:<local directory>") from None
    return repo, revision or None, found


def _hf_size(name: str, pre: dict) -> int:
    size = pre.get("crop_size") if pre.get("do_center_crop") else pre.get("size")
    if isinstance(size, dict):
        size = size.get("height") or size.get("shortest_edge")
    if not isinstance(size, int):
        raise _error(name, f"preprocessor_config.json gives no square input size ({pre.get('size')!r})")
    return size


def resolve_hf(name: str, ref: str) -> BackboneConfig:
    model_id, revision, files = _hf_files(name, ref)
    cfg, pre = dict(files["config.json"]), files["preprocessor_config.json"]
    model_type = cfg.get("model_type")
    if model_type in VISION_TOWERS:  # an image-text model: its vision tower
        cfg = {**cfg.get("vision_config", {}), "model_type": VISION_TOWERS[model_type]}
        model_type = cfg["model_type"]
    missing = [k for k in ("model_type", "hidden_size", "num_hidden_layers", "patch_size") if k not in cfg]
    if missing or "image_mean" not in pre or "image_std" not in pre:
        raise _error(name, f"config.json misses {missing}" if missing else
                     "preprocessor_config.json has no image_mean/image_std")
    keep = {k: v for k, v in cfg.items() if not k.startswith("_") and k not in ("architectures", "transformers_version")}
    return BackboneConfig(name, "transformers", model_id, _hf_size(name, pre), _triple(name, "mean", pre["image_mean"]),
                          _triple(name, "std", pre["image_std"]), int(cfg["patch_size"]), int(cfg["hidden_size"]),
                          int(cfg["num_hidden_layers"]), "vit", kwargs=keep,
                          has_cls_token=not str(model_type).startswith("siglip"), revision=revision,
                          license=str(cfg.get("license", "")), notes=f"transformers {model_type} from {model_id}")


# --- timm:<name> and open_clip:<name>[:<pretrained>] ---------------------------------------------

def _meta_timm(name: str, arch: str, **kwargs):
    import timm
    import torch

    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch.split('_')[0]}*")[:5]
        raise _error(name, f"timm has no model {arch!r}" + (f"; e.g. {', '.join(close)}" if close else ""))
    with torch.device("meta"):
        try:
            return timm.create_model(arch, pretrained=False, num_classes=0, **kwargs), kwargs
        except TypeError:  # not a ViT that takes dynamic_img_size
            return timm.create_model(arch, pretrained=False, num_classes=0), {}


def _from_timm_model(name, source, model_id, model, kwargs, contract, **extra) -> BackboneConfig:
    size, mean, std, license_ = contract
    if hasattr(model, "blocks") and hasattr(model, "patch_embed"):
        patch = model.patch_embed.patch_size
        return BackboneConfig(name, source, model_id, size, mean, std, int(patch[0] if isinstance(patch, tuple) else patch),
                              int(model.embed_dim), len(model.blocks), "vit", kwargs=kwargs,
                              has_cls_token=getattr(model, "cls_token", None) is not None, license=license_, **extra)
    info = list(getattr(model, "feature_info", None) or [])
    if len(info) < 2:
        raise _error(name, "neither a ViT (blocks, patch_embed) nor a CNN with feature_info: raddist cannot take its features")
    stages = info[1:]  # the stem is no feature stage (as the registry's CNNs)
    return BackboneConfig(name, source, model_id, size, mean, std, None, stages[-1]["num_chs"], len(stages), "cnn",
                          kwargs={}, block_dims=tuple(s["num_chs"] for s in stages),
                          block_indices=tuple(range(1, len(info))), license=license_, **extra)


def resolve_timm(name: str, ref: str) -> BackboneConfig:
    from timm.models import get_pretrained_cfg

    arch = ref.split(".")[0]
    model, kwargs = _meta_timm(name, arch, **ANY_SIZE)
    cfg = get_pretrained_cfg(ref)
    if cfg is None:
        raise _error(name, f"timm has no pretrained cfg {ref!r} (its contract: input size, mean, std)")
    model_id = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture
    return _from_timm_model(name, "timm", model_id, model, kwargs,
                            (cfg.input_size[-1], tuple(cfg.mean), tuple(cfg.std), cfg.license or ""))


def resolve_open_clip(name: str, ref: str) -> BackboneConfig:
    try:
        import open_clip
    except ImportError:
        raise _error(name, "needs open_clip: pip install open_clip_torch") from None
    model_name, _, pretrained = ref.partition(":")
    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        raise _error(name, f"open_clip has no model config {model_name!r} (offline, an hf-hub: config cannot be read)")
    vision = cfg.get("vision_cfg", {})
    arch = vision.get("timm_model_name")
    if not arch:
        raise _error(name, "only open_clip models with a timm vision trunk are supported (timm_model_name)")
    pcfg = open_clip.get_pretrained_cfg(model_name, pretrained) if pretrained else {}
    size = vision.get("image_size", 224)
    size = size[0] if isinstance(size, (list, tuple)) else size
    model, kwargs = _meta_timm(name, arch, **ANY_SIZE)
    contract = (int(size), tuple(pcfg.get("mean") or CLIP_MEAN), tuple(pcfg.get("std") or CLIP_STD), "")
    return _from_timm_model(name, "open_clip", ref, model, kwargs, contract, timm_arch=arch)


RESOLVERS = {"timm": resolve_timm, "hf": resolve_hf, "open_clip": resolve_open_clip, "python": resolve_python}
for _prefix, _resolver in RESOLVERS.items():
    add_resolver(_prefix, _resolver)


# --- installed packages: the raddist.backbones entry point group ----------------------------------

ENTRY_POINT_GROUP = "raddist.backbones"


def load_entry_points() -> List[str]:
    """Register the backbones installed packages declare: each entry point of the group names a
    BackboneConfig, a list of them, or a function returning either (it may also register them itself).
    Returns the names registered. A broken plugin is one ConfigError naming it."""
    from importlib.metadata import entry_points

    names: List[str] = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            found = ep.load()
            found = found() if callable(found) and not isinstance(found, BackboneConfig) else found
        except Exception as e:  # noqa: BLE001 - whatever the plugin raises, it is that plugin's
            raise ConfigError(f"entry point {ep.name} = {ep.value} ({ENTRY_POINT_GROUP}) fails to load: "
                              f"{type(e).__name__}: {str(e).strip()[:200]}") from None
        for config in ([found] if isinstance(found, BackboneConfig) else list(found or [])):
            register(config, overwrite=True)
            names.append(config.name)
    return names
