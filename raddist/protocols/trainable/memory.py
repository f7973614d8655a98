"""How much GPU memory a trainable cell needs, and where it fits: decided before any worker starts.

    est = memory.estimate(get_config("dinov2_vitg14"), finetune.Params(batch_size=128), image_size=224)
    print(est.describe())   # dinov2_vitg14 finetune @224: 1135M params (1135M train) ... on gpu_a100x8

From the real architecture on the meta device (no weights, no memory):
  - parameters, and those the method trains (LoRA and BitFit train a few percent);
  - activation bytes per image: every tensor autograd saves for backward in a bf16 forward of the
    wrapped model at the contract's image size, batch 2 minus batch 1 (what grows with the batch).
    With activation checkpointing (ViTs: timm set_grad_checkpointing) a block keeps only its input,
    and one block at a time is recomputed.
States: fp32 weights (4 B/param), fp32 gradients and AdamW's two moments (12 B/trainable param).
FSDP shards the states over the workers (weights gathered a block at a time: counted whole here).

The choice, in order: the smallest node type (NODE_TYPES, as in cluster.yaml) whose card holds the
states (else FSDP over the workers, when there are several, or the spec asks) and a micro-batch of
at least MIN_MICRO_BATCH images (else activation checkpointing). The micro-batch here is the
estimate's; each worker measures its own card (loop.sized_micro_batch). None fits: one line, the
cell fails before any worker starts.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

GIB = 2 ** 30
WEIGHT_BYTES = 4  # fp32 master weights
TRAIN_STATE_BYTES = 12  # per trainable parameter: fp32 gradient + AdamW exp_avg + exp_avg_sq
RESERVED_BYTES = 2 * GIB  # CUDA context, cuBLAS workspaces, allocator fragmentation
MEMORY_BUDGET = 0.9  # of what is left after the states, for one micro-batch's activations
MIN_MICRO_BATCH = 8  # below this, checkpoint activations rather than crawl
MAX_MICRO_BATCH = 512


@dataclass(frozen=True)
class NodeType:
    """A GPU node type of the cluster: memory per card, and what a worker asks Ray for to land there."""

    name: str
    gpu_memory_gib: float
    large: bool = False  # a large-GPU type: its workers ask for resources.large_gpu_resource (spec.py)
    resources: Tuple[Tuple[str, float], ...] = ()  # extra per-worker resources, only ones the autoscaler knows


# cluster.yaml's GPU node types, smallest card first
NODE_TYPES: Tuple[NodeType, ...] = (
    NodeType("gpu_a10g", 22.5),  # 23,028 MiB as nvidia-smi reports it
    NodeType("gpu_a100x8", 40.0, large=True),  # A100-SXM4-40GB; advertises "large_gpu" (cluster.yaml)
)


@dataclass(frozen=True)
class Footprint:
    """What the architecture itself says, per image at one image size."""

    params: int
    trainable: int
    activation_bytes: int  # per image, saved for backward
    checkpointed_bytes: Optional[int]  # per image with activation checkpointing; None: not supported


@dataclass(frozen=True)
class Estimate:
    backbone: str
    method: str
    image_size: int
    batch_size: int
    workers: int
    footprint: Footprint
    state_bytes: int  # weights + gradients + optimiser states on one card (sharded under FSDP)
    micro_batch: int
    accumulation: int
    grad_checkpointing: bool
    strategy: str  # "ddp" (each worker holds everything) or "fsdp"
    node: Optional[NodeType]
    error: str = ""  # why nothing holds it (then node is None)

    @property
    def peak_bytes(self) -> int:
        per_image = self.footprint.checkpointed_bytes if self.grad_checkpointing else self.footprint.activation_bytes
        return self.state_bytes + RESERVED_BYTES + self.micro_batch * per_image

    def describe(self) -> str:
        f = self.footprint
        head = (f"{self.backbone} {self.method} @{self.image_size}px: {f.params / 1e6:.1f}M params "
                f"({f.trainable / 1e6:.2f}M train), states {self.state_bytes / GIB:.1f} GiB, "
                f"activations {f.activation_bytes / 2 ** 20:.0f} MiB/image")
        if self.node is None:
            return f"{head}; {self.error}"
        return (f"{head}; batch {self.batch_size} = {self.accumulation} x micro-batch {self.micro_batch}"
                f"{', activation checkpointing' if self.grad_checkpointing else ''}, {self.strategy} x{self.workers}"
                f" on {self.node.name} ({self.peak_bytes / GIB:.1f} of {self.node.gpu_memory_gib:g} GiB)")

    def training_config(self) -> Dict:
        """What the training loop reads (config['memory'])."""
        return {"micro_batch": self.micro_batch, "grad_checkpointing": self.grad_checkpointing,
                "strategy": self.strategy}


@functools.lru_cache(maxsize=64)
def footprint(config, method, image_size: int) -> Footprint:
    """Parameter counts and per-image activation bytes of the classifier, measured on the meta device
    (seconds for a ViT-g: remembered per backbone, method and size)."""
    import torch

    from raddist.protocols.trainable.model import ModelSpec, build_classifier, classifier_of

    spec = ModelSpec(config.name, "random", 1, "binary", method)
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = build_classifier(spec).to(torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    per_image = _saved_bytes(model, image_size, 2) - _saved_bytes(model, image_size, 1)
    checkpointed = None
    if config.family == "vit":
        depth = config.num_blocks
        tokens = _tokens(classifier_of(model), image_size)
        block_input = tokens * config.embed_dim * 2  # bf16 residual stream, kept per block
        checkpointed = depth * block_input + math.ceil(per_image / depth)
    return Footprint(params, trainable, int(per_image), checkpointed)


def _saved_bytes(model, image_size: int, batch: int) -> int:
    import torch

    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    x = torch.zeros(batch, 3, image_size, image_size, device="meta", dtype=torch.bfloat16)
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(saved)


def _tokens(classifier, image_size: int) -> int:
    timm_model = classifier.embedder.model
    grid = timm_model.patch_embed.dynamic_feat_size((image_size, image_size)) if hasattr(
        timm_model.patch_embed, "dynamic_feat_size") else timm_model.patch_embed.grid_size
    return int(grid[0] * grid[1]) + int(getattr(timm_model, "num_prefix_tokens", 0))


def estimate(config, params, image_size: int, workers: int = 1,
             node_types: Sequence[NodeType] = NODE_TYPES) -> Estimate:
    """Where a trainable cell of `params` (a trainable protocol's Params) on backbone `config` fits."""
    return plan(footprint(config, params.method(), image_size), config.name, params.method().name, image_size,
                params.batch_size, workers, params.fsdp, node_types)


def plan(f: Footprint, backbone: str, method: str, image_size: int, batch_size: int, workers: int = 1,
         fsdp: bool = False, node_types: Sequence[NodeType] = NODE_TYPES) -> Estimate:
    """The smallest node type that holds the states and a micro-batch of MIN_MICRO_BATCH (or the whole batch)."""
    train_states = f.trainable * TRAIN_STATE_BYTES
    shards = workers if (fsdp and workers > 1) else 1
    common = dict(backbone=backbone, method=method, image_size=image_size, batch_size=batch_size,
                  workers=workers, footprint=f)
    floor = min(MIN_MICRO_BATCH, batch_size)
    for node in sorted(node_types, key=lambda n: n.gpu_memory_gib):
        for strategy, parts in (("fsdp" if shards > 1 else "ddp", shards), ("fsdp", workers)):
            if parts == 1 and strategy == "fsdp":
                continue
            states = f.params * WEIGHT_BYTES + math.ceil(train_states / parts)
            free = node.gpu_memory_gib * GIB - RESERVED_BYTES - states
            for checkpointing in (False, True):
                per_image = f.checkpointed_bytes if checkpointing else f.activation_bytes
                if per_image is None or free <= 0:
                    continue
                micro = micro_batch(free, per_image, batch_size)
                if micro >= floor:
                    return Estimate(**common, state_bytes=states, micro_batch=micro,
                                    accumulation=math.ceil(batch_size / micro), grad_checkpointing=checkpointing,
                                    strategy=strategy, node=node)
    largest = max(node_types, key=lambda n: n.gpu_memory_gib) if node_types else None
    need = f.params * WEIGHT_BYTES + math.ceil(train_states / max(1, workers)) + RESERVED_BYTES
    where = f"{largest.name}'s {largest.gpu_memory_gib:g} GiB" if largest else "no GPU node type"
    error = (f"does not fit {where}: {need / GIB:.1f} GiB of states across {workers} worker(s) plus "
             f"{floor} images of activations; use more train_workers with fsdp, a smaller backbone, or lora/bitfit")
    return Estimate(**common, state_bytes=f.params * WEIGHT_BYTES + train_states, micro_batch=0, accumulation=0,
                    grad_checkpointing=False, strategy="ddp", node=None, error=error)


def micro_batch(free_bytes: float, per_image: float, batch_size: int) -> int:
    """The largest power of two (at most batch_size and MAX_MICRO_BATCH) whose activations fit the budget."""
    n = int(MEMORY_BUDGET * free_bytes // max(1.0, per_image))
    n = min(n, batch_size, MAX_MICRO_BATCH)
    return 0 if n < 1 else 1 << (n.bit_length() - 1)
