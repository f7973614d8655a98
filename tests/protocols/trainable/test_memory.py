"""The memory estimate: parameter counts from the meta device against the analytic count, the
placement rules (node type, micro-batch, checkpointing, FSDP, refusal), and, where a GPU exists,
against torch.cuda.max_memory_allocated."""

import os

import pytest
import torch

from raddist import protocols
from raddist.backbones.registry import get_config
from raddist.protocols.trainable import memory
from raddist.protocols.trainable.memory import GIB, Footprint, NodeType, footprint, plan

GPU_16 = NodeType("small", 16.0)
GPU_80 = NodeType("large", 80.0)


def method(name, **kw):
    return protocols.get(name).params(**kw).method()


def analytic_vit(D, depth, patch, tokens, hidden, layer_scale, classes=1):
    """Parameters of a timm ViT with a class token and a linear head, counted by hand."""
    block = (2 * D) + (3 * D * D + 3 * D) + (D * D + D) + (2 * D) + (D * hidden + hidden) + (hidden * D + D)
    block += 2 * D if layer_scale else 0
    embed = 3 * patch * patch * D + D + D + tokens * D  # patch projection, class token, positions
    return embed + depth * block + 2 * D + D * classes + classes


def test_vit_parameter_counts_by_method_match_the_analytic_count():
    config = get_config("dinov2_vits14")
    D, depth, tokens = 384, 12, (224 // 14) ** 2 + 1
    full = footprint(config, method("finetune"), 224)
    assert full.params == full.trainable == analytic_vit(D, depth, 14, tokens, 4 * D, layer_scale=True)
    r = 8
    lora = footprint(config, method("lora", r=r), 224)
    adapters = depth * r * ((D + 3 * D) + (D + 4 * D) + (4 * D + D))  # qkv, fc1, fc2: r * (in + out)
    assert lora.trainable == adapters + D + 1
    bitfit = footprint(config, method("bitfit"), 224)
    biases = depth * (D + 3 * D + D + D + 4 * D + D) + D + D  # norms, qkv, proj, fc1, fc2; patch, final norm
    assert bitfit.trainable == biases + D + 1
    # activations grow with the tokens: a frozen backbone saves less, checkpointing much less
    assert bitfit.activation_bytes < full.activation_bytes
    assert full.checkpointed_bytes < full.activation_bytes / 5
    assert full.activation_bytes > depth * tokens * D * 2 * 8  # at least a few bf16 copies per block


def test_the_smallest_card_that_holds_a_floor_micro_batch_is_chosen():
    f = Footprint(params=300_000_000, trainable=300_000_000, activation_bytes=1536 * 2 ** 20,
                  checkpointed_bytes=30 * 2 ** 20)
    est = plan(f, "vit_l", "finetune", 224, 128, node_types=[GPU_80, GPU_16])
    assert est.node == GPU_16 and est.strategy == "ddp" and est.grad_checkpointing
    assert est.micro_batch * est.accumulation >= 128 and est.peak_bytes <= GPU_16.gpu_memory_gib * GIB
    roomy = plan(f, "vit_l", "finetune", 224, 128, node_types=[GPU_80])
    assert not roomy.grad_checkpointing and roomy.micro_batch >= memory.MIN_MICRO_BATCH
    assert "batch 128 = " in roomy.describe() and "on large" in roomy.describe()


def test_states_too_big_for_one_card_are_sharded_over_the_workers_or_refused():
    f = Footprint(params=6_000_000_000, trainable=6_000_000_000, activation_bytes=2 ** 30,
                  checkpointed_bytes=2 ** 26)
    alone = plan(f, "vit_huge", "finetune", 224, 128, workers=1, node_types=[GPU_16, GPU_80])
    assert alone.node is None and "does not fit large's 80 GiB" in alone.describe()
    assert "\n" not in alone.describe()
    sharded = plan(f, "vit_huge", "finetune", 224, 128, workers=8, node_types=[GPU_16, GPU_80])
    assert sharded.strategy == "fsdp" and sharded.node is not None
    asked = plan(Footprint(1000, 1000, 10, 1), "tiny", "finetune", 64, 8, workers=2, fsdp=True)
    assert asked.strategy == "fsdp"


def test_lora_needs_far_less_than_fine_tuning():
    config = get_config("dinov2_vits14")
    full = memory.estimate(config, protocols.get("finetune").params(batch_size=128), 224)
    lora = memory.estimate(config, protocols.get("lora").params(batch_size=128), 224)
    assert lora.state_bytes < full.state_bytes / 2
    assert full.node is not None and full.accumulation * full.micro_batch >= 128


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_the_estimate_bounds_the_measured_peak_of_one_step(monkeypatch):
    """torch.cuda.max_memory_allocated of one step (benchmarks/train_memory.py) against the estimate."""
    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(__file__), "..", "..", "..", "benchmarks"))
    from train_memory import measure_step

    result = measure_step("dinov2_vits14", "finetune", batch_size=32, image_size=224)
    assert result["peak_bytes"] <= result["estimated_peak_bytes"] * 1.1
    assert result["peak_bytes"] >= result["estimated_peak_bytes"] * 0.3


def test_a_gpu_cell_nothing_holds_fails_in_one_line_before_any_worker_starts():
    from raddist.protocols.base import TrainInputs
    from raddist.protocols.trainable.protocol import memory_plan

    inputs = TrainInputs("binary", ["a"], ["a"], None, "dinov2_vits14", "random", {"size": 224}, "", use_gpu=True)
    params = protocols.get("finetune").params(batch_size=64)
    with pytest.raises(ValueError, match=r"^dinov2_vits14 finetune @224px: .* does not fit tiny's 2 GiB[^\n]*$"):
        memory_plan(params, inputs, [NodeType("tiny", 2.0)])
    settings, est = memory_plan(params, inputs, [NodeType("roomy", 40.0)])
    assert est.node.name == "roomy" and settings["strategy"] == "ddp"
    assert settings["micro_batch"] is None  # the worker sizes it on its own card
    cpu, none = memory_plan(params, TrainInputs("binary", ["a"], ["a"], None, "dinov2_vits14", "random",
                                                {"size": 224}, ""))
    assert none is None and cpu["micro_batch"] is None and not cpu["grad_checkpointing"]
