"""One optimiser step of the effective batch, in micro-batches sized to the card.

`batch_size` is a training setting: the images behind each optimiser step on a worker. Memory
decides only how many of them go through forward and backward at once (the micro-batch):
accumulate_gradients augments the whole batch once (the same random crops as one large batch),
runs it in micro-batches, and weights each micro-batch's mean loss by its share of the batch, so
the summed gradients equal the full batch's (to float rounding; BatchNorm's batch statistics are
the exception: they are per micro-batch). DDP synchronises on the last micro-batch only.

The micro-batch on a GPU: the spec's micro_batch, else the largest power of two whose activations,
measured by one probe forward and backward (as the embedding actors size their batches), fit
MEMORY_BUDGET of the memory left once the optimiser states are counted; on a CPU the whole batch.
"""

from __future__ import annotations

import contextlib
import math

PROBE_IMAGES = 4


def accumulate_gradients(model, classifier, images, labels, micro_batch: int, task_type: str, augment: bool = True,
                         batch_sum: bool = False):
    """Backward of one batch in micro-batches (gradients add up in .grad); returns the batch's summed loss.

    model: what runs forward (the classifier, or its DDP/FSDP/peft wrapper); classifier: the Classifier in it.
    batch_sum (multilabel): the reference's loss, BCE summed over the batch and averaged over labels, which
    is the mean loss (summed over labels) x batch / labels: the step the reference took, 17x ours on NIH.
    """
    import torch

    from raddist.protocols.trainable.model import loss_fn

    on_gpu = images.device.type == "cuda"
    with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=on_gpu):
        x = classifier.inputs(images, augment)
    n = len(x)
    scale = n / labels.shape[1] if batch_sum and task_type == "multilabel" else 1.0
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    starts = range(0, n, micro_batch)
    for i, start in enumerate(starts):
        xs, ys = x[start:start + micro_batch], labels[start:start + micro_batch]
        last = i == len(starts) - 1
        sync = model.no_sync() if not last and hasattr(model, "no_sync") else contextlib.nullcontext()
        with sync:
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=on_gpu):
                logits = model(xs)
            loss = loss_fn(logits.float(), ys, task_type)
            (loss * (scale * len(xs) / n) if len(xs) != n or scale != 1.0 else loss).backward()
        total += loss.detach().double() * len(xs)
    return total


def sized_micro_batch(model, classifier, batch_size: int, image_size: int, num_classes: int, task_type: str,
                      device) -> int:
    """The largest power of two <= batch_size whose forward and backward fit the card (one probe)."""
    import torch

    from raddist.protocols.trainable.memory import TRAIN_STATE_BYTES, micro_batch

    probe = min(PROBE_IMAGES, batch_size)
    images = torch.zeros(probe, image_size, image_size, dtype=torch.uint8, device=device)
    labels = (torch.zeros(probe, dtype=torch.long, device=device) if task_type == "multiclass"
              else torch.zeros(probe, num_classes, device=device))
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.random.fork_rng(devices=[device]):  # the probe must not move the training's random streams
        accumulate_gradients(model, classifier, images, labels, probe, task_type, augment=False)
    torch.cuda.synchronize(device)
    per_image = max(1, (torch.cuda.max_memory_allocated(device) - base) // probe)
    for p in model.parameters():
        p.grad = None
    # AdamW's two moments are allocated at the first step: leave them room (fp32, 2/3 of the state bytes)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    free, _ = torch.cuda.mem_get_info(device)
    room = free - trainable * TRAIN_STATE_BYTES * 2 // 3
    return max(1, micro_batch(room, per_image, batch_size))


def accumulation_steps(batch_size: int, micro_batch: int) -> int:
    return math.ceil(batch_size / micro_batch)


def parallel(model, classifier, strategy: str):
    """DDP (each worker holds the whole model), or FSDP sharded a transformer block at a time, through
    Ray Train's torch integration; a single worker runs the model as it is."""
    import ray.train.torch

    kwargs = {}
    if strategy == "fsdp":
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        blocks = getattr(classifier.embedder.model, "blocks", None)
        # use_orig_params: frozen and trained parameters may share a block (LoRA, BitFit)
        kwargs = {"use_orig_params": True}
        if blocks is not None and len(blocks):
            kwargs["auto_wrap_policy"] = ModuleWrapPolicy({type(blocks[0])})
    return ray.train.torch.prepare_model(model, move_to_device=False, parallel_strategy=strategy,
                                         parallel_strategy_kwargs=kwargs)


@contextlib.contextmanager
def full_state(model, strategy: str):
    """None, or under FSDP the full state dict, gathered by every rank (a collective), held by rank 0."""
    if strategy != "fsdp":
        yield None
        return
    from torch.distributed.fsdp import FullStateDictConfig, FullyShardedDataParallel, StateDictType

    config = FullStateDictConfig(offload_to_cpu=True, rank0_only=True)
    with FullyShardedDataParallel.state_dict_type(model, StateDictType.FULL_STATE_DICT, config):
        yield model.state_dict()
