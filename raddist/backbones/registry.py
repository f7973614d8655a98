"""The backbone registry: name -> how to build it, its input contract and its feature widths.

In the style of timm's ``_registry.py`` / ``_pretrained.py``: one typed, frozen config per backbone.
Everything planning needs (input size, mean/std, feature widths) is written here as literals, so
planning never instantiates a model. ``tests/backbones/test_registry.py`` checks the literals
against timm's own pretrained cfgs, and against the real models built on the meta device.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

SOURCES = ("timm", "open_clip", "transformers", "python")
FAMILIES = ("vit", "cnn")
CHANNEL_LAYOUTS = ("3c", "1c", "3d")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class BackboneConfig:
    name: str
    source: str  # one of SOURCES
    model_id: str  # timm "arch.tag", or a hub id ("hf-hub:..." for open_clip, "org/name" for transformers)
    input_size: int  # square side, in pixels, of the uint8 images the pipeline ships
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    patch_size: Optional[int]  # None for CNNs
    embed_dim: int  # width of the last block (ViT: token width; CNN: channels of the last stage)
    num_blocks: int  # ViT: depth; CNN: number of stages usable as features
    family: str  # one of FAMILIES
    # Extra constructor kwargs: timm create_model kwargs (e.g. img_size), or, for transformers,
    # the model config (model_type + fields) so random init needs no hub access.
    kwargs: Dict[str, Any] = field(default_factory=dict, hash=False)
    # CNNs: width of each stage and its index in the model's forward_intermediates, earliest first.
    block_dims: Optional[Tuple[int, ...]] = None
    block_indices: Optional[Tuple[int, ...]] = None
    # False for ViTs without a class token (SAM): 'cls' is then the mean of the block's tokens.
    has_cls_token: bool = True
    # open_clip: the timm architecture of the vision trunk (used for random init and file weights).
    timm_arch: Optional[str] = None
    # The square side the weights were trained at, where runs elsewhere are off their distribution
    # (SAM: 1024); None when the model is as at home at any size the plans use.
    trained_size: Optional[int] = None
    license: str = ""
    notes: str = ""
    # The weights need an accepted licence on the hub and a token (HF_TOKEN) to download.
    gated: bool = False
    # A hub revision (commit or tag) the weights are pinned to; None: the hub's main, resolved at run start.
    revision: Optional[str] = None
    # Room for native 3D encoders (nothing 3D-native runs yet): slices per input volume, the voxel
    # spacing (mm, z y x) it was trained at, and its channel layout ("3c" grey replicated to RGB,
    # "1c" one grey channel, "3d" a (C, D, H, W) volume).
    input_depth: Optional[int] = None
    spacing: Optional[Tuple[float, float, float]] = None
    channel_layout: str = "3c"

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"{self.name}: source {self.source!r} not in {SOURCES}")
        if self.channel_layout not in CHANNEL_LAYOUTS:
            raise ValueError(f"{self.name}: channel_layout {self.channel_layout!r} not in {CHANNEL_LAYOUTS}")
        if self.family not in FAMILIES:
            raise ValueError(f"{self.name}: family {self.family!r} not in {FAMILIES}")
        if self.family == "cnn" and (self.block_dims is None or len(self.block_dims) != self.num_blocks):
            raise ValueError(f"{self.name}: a cnn needs block_dims with num_blocks={self.num_blocks} entries")
        if self.family == "cnn" and (self.block_indices is None or len(self.block_indices) != self.num_blocks):
            raise ValueError(f"{self.name}: a cnn needs block_indices with num_blocks={self.num_blocks} entries")

    @property
    def arch(self) -> Optional[str]:
        """The timm architecture that gets built (None for transformers models)."""
        if self.source == "timm":
            return self.model_id.split(".")[0]
        return self.timm_arch

    @property
    def has_patch_mean(self) -> bool:
        """'patch_mean' is only distinct from 'cls' for ViTs with a class token."""
        return self.family == "vit" and self.has_cls_token

    def to_dict(self) -> dict:
        return asdict(self)


_REGISTRY: Dict[str, BackboneConfig] = {}


def register(config: BackboneConfig, overwrite: bool = False) -> BackboneConfig:
    if config.name in _REGISTRY and not overwrite:
        raise ValueError(f"backbone {config.name!r} is already registered")
    _REGISTRY[config.name] = config
    return config


# "prefix:" names (timm:, hf:, open_clip:, python:) resolve to a config on first use
# (raddist.backbones.resolve adds the resolvers when the package is imported).
_RESOLVERS: Dict[str, Callable[[str, str], BackboneConfig]] = {}


def add_resolver(prefix: str, resolver: Callable[[str, str], BackboneConfig]) -> None:
    _RESOLVERS[prefix] = resolver


def is_named_by_source(name: str) -> bool:
    """A name like timm:<model> that resolves without a registry entry."""
    return name.partition(":")[0] in _RESOLVERS and ":" in name


def get_config(name: str) -> BackboneConfig:
    if name not in _REGISTRY and is_named_by_source(name):
        prefix, _, ref = name.partition(":")
        _REGISTRY[name] = _RESOLVERS[prefix](name, ref)
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown backbone {name!r}; registered: {', '.join(list_backbones())}; or a model "
                       "by name: timm:<name>, hf:<org>/<id>[@revision], open_clip:<name>[:<pretrained>], "
                       "python:<module>:<callable>") from None


def list_backbones() -> List[str]:
    """The registered names (and names by source resolved so far)."""
    return sorted(_REGISTRY)


# timm ViTs built with dynamic_img_size take any multiple of their patch size: the position embeddings
# are interpolated to each input's grid in the forward (at the built size they are used as they are, so
# the features there do not change). Without it a ViT with a class token refuses any other size.
ANY_SIZE = {"dynamic_img_size": True}


def size_error(config: BackboneConfig, size: int) -> Optional[str]:
    """Why ``config`` cannot take square images of ``size`` (one line), or None if it can."""
    if config.patch_size and size % config.patch_size:
        return (f"image size {size} is not a multiple of {config.name}'s patch size {config.patch_size} "
                f"(use {size // config.patch_size * config.patch_size} or {(size // config.patch_size + 1) * config.patch_size})")
    return None


# The library each source builds with: (module to import, the package that installs it). open_clip is
# needed for hub weights only: random init and weight files build its timm trunk.
LIBRARIES = {"timm": ("timm", "timm"), "open_clip": ("open_clip", "open_clip_torch"),
             "transformers": ("transformers", "transformers")}


def libraries(config: BackboneConfig, weights: str) -> List[Tuple[str, str]]:
    """(module, package) of every library building ``config`` with ``weights`` takes."""
    needed = [LIBRARIES["timm"]] if config.source != "transformers" else []
    if config.source != "timm" and (config.source == "transformers" or weights == "hub"):
        needed.append(LIBRARIES[config.source])
    return needed


def size_note(config: BackboneConfig, size: int) -> str:
    """A line on a size the backbone runs at but was not trained at ('' when there is nothing to say)."""
    if config.trained_size and size != config.trained_size:
        return (f"{config.name} runs at {size} as every backbone at this task's size (the reference's too); its "
                f"weights were trained at {config.trained_size} only (position embeddings interpolated; at "
                f"{config.trained_size} its patch tokens would take {(config.trained_size / size) ** 2:.1f}x the cache)")
    return ""


def _vit(name, model_id, input_size, mean, std, patch, dim, depth, **kw) -> BackboneConfig:
    return register(BackboneConfig(name, kw.pop("source", "timm"), model_id, input_size, mean, std,
                                   patch, dim, depth, "vit", **kw))


def _cnn(name, model_id, dims, indices, **kw) -> BackboneConfig:
    return register(BackboneConfig(name, "timm", model_id, kw.pop("input_size", 224), kw.pop("mean", IMAGENET_MEAN),
                                   kw.pop("std", IMAGENET_STD), None, dims[-1], len(dims), "cnn",
                                   block_dims=tuple(dims), block_indices=tuple(indices), **kw))


# --- the reference study's backbones (Baharoon et al., arXiv 2312.02366) ---------------------------
# The same models, not always the same weights or feature points as the reference code: its ViT-L is
# google/vit-large-patch16-224 (IN-21k, IN-1k fine-tuned; here timm's augreg IN-21k), its ResNet-152
# torchvision's V2 weights (here V1), its VGG-19 the 4096-d fc7 (here pooled conv stages), its
# BiomedCLIP the 512-d projection (here the 768-d trunk), and it normalised every backbone with
# ImageNet mean/std (here each its own). SAM classifies at 1024, as there.

# DINOv2 checkpoints are 518px; the study (and DINOv2's own linear evals) run them at 224.
# timm resamples the position embedding when loading at img_size=224 (16x16 patch grid).
for _size, _dim, _depth in (("small", 384, 12), ("base", 768, 12), ("large", 1024, 24), ("giant", 1536, 40)):
    _vit(f"dinov2_vit{_size[0]}14", f"vit_{_size}_patch14_dinov2.lvd142m", 224, IMAGENET_MEAN, IMAGENET_STD,
         14, _dim, _depth, kwargs={"img_size": 224, **ANY_SIZE}, license="apache-2.0",
         notes="DINOv2 LVD-142M; 518px checkpoint run at 224 (pos-embed resampled).")

_vit("vit_large_in21k", "vit_large_patch16_224.augreg_in21k", 224, HALF, HALF, 16, 1024, 24, kwargs=dict(ANY_SIZE),
     license="apache-2.0", notes="Supervised ViT-L/16, ImageNet-21k (AugReg).")
_vit("mae_vitl16", "vit_large_patch16_224.mae", 224, IMAGENET_MEAN, IMAGENET_STD, 16, 1024, 24, kwargs=dict(ANY_SIZE),
     license="cc-by-nc-4.0", notes="MAE ViT-L/16 pretrained encoder (no fine-tuning).")
_vit("clip_vitl14", "vit_large_patch14_clip_224.openai", 224, CLIP_MEAN, CLIP_STD, 14, 1024, 24, kwargs=dict(ANY_SIZE),
     license="apache-2.0", notes="OpenAI CLIP ViT-L/14 image tower; the projection head is dropped.")
_vit("openclip_vith14", "vit_huge_patch14_clip_224.laion2b", 224, CLIP_MEAN, CLIP_STD, 14, 1280, 32, kwargs=dict(ANY_SIZE),
     license="apache-2.0", notes="OpenCLIP ViT-H/14 LAION-2B image tower; the projection head is dropped.")
# SAM's encoder was trained at 1024 only. Its windowed attention and position embeddings (absolute
# and relative, both interpolated on the fly by timm) also run at other sizes, but off-distribution.
# Classification runs it at 1024. Segmentation runs it at the task's size (448 in the shipped grids),
# as every other backbone and as the reference's segmentation code (--image-size 448 for all): one
# decoded pixel cache per task, and patch tokens 5x smaller than at 1024 (64 x 64 x 1024 x 5 blocks
# in fp16 is 42 MB a slice). `raddist plan` and `raddist check` say so (size_note). No class token: 'cls' = mean token, taken from the raw block outputs (1024-d), not
# from the 256-d neck.
_vit("sam_vitl16", "samvit_large_patch16.sa1b", 1024, IMAGENET_MEAN, IMAGENET_STD, 16, 1024, 24,
     has_cls_token=False, trained_size=1024, license="apache-2.0",
     notes="SAM ViT-L image encoder; no class token, 'cls' is the mean of each block's tokens.")
# MSN is not in timm: transformers ViTMSNModel (config written here so random init is offline).
_vit("msn_vitl16", "facebook/vit-msn-large", 224, IMAGENET_MEAN, IMAGENET_STD, 16, 1024, 24,
     source="transformers", license="apache-2.0", notes="MSN ViT-L/16 (transformers ViTMSNModel).",
     kwargs={"model_type": "vit_msn", "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
             "intermediate_size": 4096, "image_size": 224, "patch_size": 16, "layer_norm_eps": 1e-6,
             "qkv_bias": True})
# BiomedCLIP's vision tower is a timm vit_base_patch16_224 trunk inside open_clip.
_vit("biomedclip_vitb16", "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", 224,
     CLIP_MEAN, CLIP_STD, 16, 768, 12, source="open_clip", timm_arch="vit_base_patch16_224", kwargs=dict(ANY_SIZE),
     license="mit",
     notes="BiomedCLIP (PMC-15M) image trunk; hub weights need open_clip_torch.")

_cnn("resnet152", "resnet152.tv_in1k", (256, 512, 1024, 2048), (1, 2, 3, 4), license="bsd-3-clause",
     notes="torchvision IN-1k weights; stages = layer1..layer4.")
_cnn("vgg19", "vgg19.tv_in1k", (64, 128, 256, 512, 512), (0, 1, 2, 3, 4), license="bsd-3-clause",
     notes="torchvision IN-1k weights; stages = the 5 conv blocks (before their max-pool).")
_cnn("densenet201", "densenet201.tv_in1k", (256, 512, 1792, 1920), (1, 2, 3, 4), license="apache-2.0",
     notes="torchvision IN-1k weights; stages = dense blocks 1-3 and the final norm.")

# --- the models a radiology team weighs today (issue 24) ---------------------------------------------
# Each contract (size, mean, std) is the model's own: timm's pretrained cfg for timm ids (checked by
# tests/backbones/test_registry.py), the hub's preprocessor_config.json / config.json for transformers
# ones (copied here as literals so planning and random init stay offline; source in the comment).

# RAD-DINO, hub microsoft/rad-dino: config.json Dinov2Config (hidden 768, 12 layers, 12 heads, patch 14,
# image_size 518, layerscale 1.0); preprocessor_config.json BitImageProcessor: crop 518, bicubic,
# image_mean [0.5307]*3, image_std [0.2583]*3 (its own chest X-ray statistics, not ImageNet's).
# Licence: MSRLA (research use only) at release, MIT from later revisions: pin the revision you cite.
_vit("rad_dino", "microsoft/rad-dino", 518, (0.5307,) * 3, (0.2583,) * 3, 14, 768, 12, source="transformers",
     license="msrla (research use only; later revisions mit)", trained_size=518,
     notes="RAD-DINO (Microsoft), DINOv2-B/14 continued on chest X-rays; transformers Dinov2Model.",
     kwargs={"model_type": "dinov2", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
             "mlp_ratio": 4, "image_size": 518, "patch_size": 14, "layer_norm_eps": 1e-6, "layerscale_value": 1.0})
# DINOv3 (timm vit_*_patch16_dinov3.lvd1689m; pretrained cfg: 256 px, ImageNet mean/std, licence
# dinov3-license, gated on the hub). RoPE, so any multiple of 16 runs without resampling; run at 224 like
# DINOv2. One class token and 4 register tokens: timm's forward_intermediates splits all 5 off as
# prefix tokens (num_prefix_tokens=5), so the patch grid holds patch tokens only.
for _size, _dim, _depth in (("small", 384, 12), ("base", 768, 12), ("large", 1024, 24), ("huge_plus", 1280, 32)):
    _vit(f"dinov3_vit{_size[0]}{'p' if _size.endswith('plus') else ''}16", f"vit_{_size}_patch16_dinov3.lvd1689m",
         224, IMAGENET_MEAN, IMAGENET_STD, 16, _dim, _depth, kwargs={"img_size": 224}, license="dinov3-license",
         gated=True, notes="DINOv3 LVD-1689M; 256px checkpoint run at 224 (RoPE); 4 register tokens dropped.")
# MedSigLIP-448, hub google/medsiglip-448 (Health AI Developer Foundations terms, gated): the vision tower
# of its SiglipModel, SigLIP-400M from MedGemma (hidden 1152, 27 layers, 16 heads, MLP 4304, patch 14)
# at 448; processor SiglipImageProcessor: 448 x 448, bilinear, mean = std = 0.5. No class token (an
# attention-pooling head, dropped): 'cls' is the mean token.
_vit("medsiglip_448", "google/medsiglip-448", 448, HALF, HALF, 14, 1152, 27, source="transformers",
     has_cls_token=False, gated=True, trained_size=448, license="health-ai-developer-foundations",
     notes="MedSigLIP-448 vision tower (transformers SiglipVisionModel); 'cls' is the mean token.",
     kwargs={"model_type": "siglip_vision_model", "hidden_size": 1152, "num_hidden_layers": 27,
             "num_attention_heads": 16, "intermediate_size": 4304, "image_size": 448, "patch_size": 14,
             "layer_norm_eps": 1e-6, "vision_use_head": False})
# General-domain controls. SigLIP 2 So400m/14 (timm ...siglip_224.v2_webli: 224, mean = std = 0.5; no
# class token). Perception Encoder Core L/14 (timm vit_pe_core_large_patch14_336.fb: 336, 0.5/0.5; class
# token, attention-pool head dropped).
_vit("siglip2_so400m14", "vit_so400m_patch14_siglip_224.v2_webli", 224, HALF, HALF, 14, 1152, 27,
     has_cls_token=False, kwargs=dict(ANY_SIZE), license="apache-2.0",
     notes="SigLIP 2 So400m/14 image tower (WebLI); 'cls' is the mean token.")
_vit("pe_core_vitl14", "vit_pe_core_large_patch14_336.fb", 336, HALF, HALF, 14, 1024, 24, kwargs=dict(ANY_SIZE),
     license="apache-2.0", notes="Perception Encoder Core L/14 image tower (Meta).")

# --- tiny random-init backbones for tests and the demo ----------------------------------------------

_vit("tiny_vit", "test_vit", 64, HALF, HALF, 8, 64, 4, kwargs={"img_size": 64, "patch_size": 8, "depth": 4},
     license="apache-2.0", notes="Test ViT, random init only: 8x8 patch grid at 64px.")
_cnn("tiny_cnn", "test_resnet", (32, 48, 192, 96), (1, 2, 3, 4), input_size=64, mean=HALF, std=HALF,
     license="apache-2.0", notes="Test ResNet, random init only.")

STUDY_BACKBONES = (
    "dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14", "dinov2_vitg14", "vit_large_in21k", "resnet152", "vgg19",
    "densenet201", "mae_vitl16", "msn_vitl16", "clip_vitl14", "openclip_vith14", "sam_vitl16", "biomedclip_vitb16",
)
RADIOLOGY_2026_BACKBONES = (
    "rad_dino", "dinov3_vits16", "dinov3_vitb16", "dinov3_vitl16", "dinov3_vithp16", "medsiglip_448",
    "siglip2_so400m14", "pe_core_vitl14", "biomedclip_vitb16",
)
TEST_BACKBONES = ("tiny_vit", "tiny_cnn")
