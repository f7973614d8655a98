"""Does a trainable cell fit its card? One training step of fine-tuning at batch 128, planned by
raddist.protocols.trainable.memory for each GPU node type of the cluster (the micro-batch, the
accumulation steps, activation checkpointing), run on this GPU, its peak memory against the
estimate and against the node type's card.

One step = what the training loop does per batch: augment the batch once, forward and backward in
micro-batches (bf16 autocast), AdamW step (its moments are allocated here: the peak includes them).
Random weights: the device reaches no hub.

  peak_gib        torch.cuda.max_memory_allocated over the step
  estimated_gib   the estimate's states + micro-batch activations (its CUDA reserve left out)
  ratio           peak / estimate (above 1: the estimate is short)
  fits_node       peak + the reserve <= the node type's card

  python benchmarks/train_memory.py                 # GPU: ViT-L/14 and ViT-g/14 fine-tuning, batch 128
  python benchmarks/train_memory.py --smoke         # CPU: tiny_vit, batch 8, 64 px (the step runs; no peak)
"""

from __future__ import annotations

import argparse
import time

from common import emit, machine, say


def measure_step(backbone: str, method: str, batch_size: int, image_size: int, node=None) -> dict:
    """One training step planned for `node` (default: this card as a node type), run here."""
    import torch

    from raddist import protocols
    from raddist.backbones.registry import get_config
    from raddist.protocols.trainable import memory
    from raddist.protocols.trainable.model import (ModelSpec, build_classifier, set_grad_checkpointing,
                                                   trainable_parameters)
    from raddist.protocols.trainable.step import accumulate_gradients

    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    if node is None:
        total = torch.cuda.get_device_properties(0).total_memory if on_gpu else 64 * memory.GIB
        node = memory.NodeType("this_card", total / memory.GIB)
    params = protocols.get(method).params(batch_size=batch_size)
    est = memory.estimate(get_config(backbone), params, image_size, node_types=[node])
    row = {"backbone": backbone, "method": method, "batch_size": batch_size, "image_size": image_size,
           "node": node.name, "node_gib": node.gpu_memory_gib, "estimate": est.describe()}
    if est.node is None:
        return {**row, "fits": False}
    torch.manual_seed(0)
    model = build_classifier(ModelSpec(backbone, "random", 14, "multilabel", params.method())).to(device)
    if est.grad_checkpointing:
        set_grad_checkpointing(model)
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=1e-5)
    images = torch.randint(0, 256, (batch_size, image_size, image_size), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 2, (batch_size, 14), device=device).float()
    if on_gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    model.train()
    loss = accumulate_gradients(model, model, images, labels, est.micro_batch, "multilabel")
    optimizer.step()
    if on_gpu:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    estimated = est.peak_bytes - memory.RESERVED_BYTES
    row.update(micro_batch=est.micro_batch, accumulation_steps=est.accumulation,
               grad_checkpointing=est.grad_checkpointing, strategy=est.strategy, loss=float(loss) / batch_size,
               step_s=round(seconds, 3), estimated_peak_bytes=estimated, estimated_gib=round(estimated / memory.GIB, 2))
    if on_gpu:
        peak = torch.cuda.max_memory_allocated()
        row.update(peak_bytes=peak, peak_gib=round(peak / memory.GIB, 2), ratio=round(peak / estimated, 3),
                   fits_node=peak + memory.RESERVED_BYTES <= node.gpu_memory_gib * memory.GIB)
    del model, optimizer
    if on_gpu:
        torch.cuda.empty_cache()
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="CPU: tiny_vit at 64 px, batch 8")
    p.add_argument("--backbones", nargs="+", default=["dinov2_vitl14", "dinov2_vitg14"])
    p.add_argument("--methods", nargs="+", default=["finetune"])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--image-size", type=int, default=224)
    args = p.parse_args()
    from raddist.protocols.trainable.memory import NODE_TYPES

    if args.smoke:
        runs = [measure_step("tiny_vit", m, 8, 64) for m in ("finetune", "lora")]
    else:
        runs = [measure_step(b, m, args.batch_size, args.image_size, node)
                for b in args.backbones for m in args.methods for node in NODE_TYPES]
    for r in runs:
        say(f"{r['estimate']}" + (f" | measured peak {r['peak_gib']} GiB vs {r['estimated_gib']} estimated "
                                  f"(x{r['ratio']}), fits {r['node']}: {r['fits_node']}" if "peak_gib" in r else ""))
    emit({"runs": runs, "machine": machine(),
          "max_ratio": max((r["ratio"] for r in runs if "ratio" in r), default=None),
          "all_fit": all(r.get("fits_node", True) and r.get("fits", True) for r in runs)})


if __name__ == "__main__":
    main()
