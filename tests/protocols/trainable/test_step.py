"""One optimiser step in micro-batches is the step of the whole batch (gradient accumulation)."""

import copy

import pytest
import torch

from raddist import protocols
from raddist.protocols.trainable.model import ModelSpec, build_classifier, trainable_parameters
from raddist.protocols.trainable.step import accumulate_gradients, accumulation_steps


def one_step(model, images, labels, micro_batch, task_type):
    # SGD: the update is linear in the gradient (AdamW's first step, lr * g / |g|, turns the rounding of
    # near-zero gradients into whole steps, whatever the batching)
    optimizer = torch.optim.SGD(trainable_parameters(model), lr=0.1, momentum=0.9, weight_decay=0.05)
    torch.manual_seed(11)  # the same crops and flips for every micro-batch size
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss = accumulate_gradients(model, model, images, labels, micro_batch, task_type)
    grads = [p.grad.clone() for p in trainable_parameters(model)]
    optimizer.step()
    return loss, grads, [p.detach().clone() for p in trainable_parameters(model)]


@pytest.mark.parametrize("method, params", [("finetune", {}), ("lora", {"r": 4, "dropout": 0.0}), ("bitfit", {})])
@pytest.mark.parametrize("task_type", ["multiclass", "multilabel"])
def test_micro_batches_give_the_full_batch_update(method, params, task_type):
    torch.manual_seed(0)
    spec = ModelSpec("tiny_vit", "random", 3, task_type, protocols.get(method).params(**params).method())
    model = build_classifier(spec)
    images = torch.randint(0, 256, (12, 64, 64), dtype=torch.uint8)
    labels = torch.randint(0, 3, (12,)) if task_type == "multiclass" else torch.randint(0, 2, (12, 3)).float()
    full_loss, full_grads, full_params = one_step(copy.deepcopy(model), images, labels, 12, task_type)
    for micro in (4, 5, 1):  # even, uneven (5 + 5 + 2) and one image at a time
        loss, grads, after = one_step(copy.deepcopy(model), images, labels, micro, task_type)
        torch.testing.assert_close(loss, full_loss, rtol=1e-6, atol=1e-6)
        for g, f in zip(grads, full_grads):
            torch.testing.assert_close(g, f, rtol=1e-4, atol=1e-6)
        for p, f in zip(after, full_params):
            torch.testing.assert_close(p, f, rtol=1e-5, atol=1e-6)


def test_accumulation_steps_cover_the_batch():
    assert [accumulation_steps(128, m) for m in (128, 64, 48, 1)] == [1, 2, 3, 128]


def test_activation_checkpointing_keeps_the_gradients_and_saves_less():
    """timm's set_grad_checkpointing, as the loop turns it on when the estimate asks: the same gradients,
    and far fewer bytes kept for backward (counted as memory.footprint counts them)."""
    from raddist.protocols.trainable.model import set_grad_checkpointing

    torch.manual_seed(0)
    spec = ModelSpec("tiny_vit", "random", 3, "multiclass", protocols.get("finetune").params().method())
    plain = build_classifier(spec)
    checkpointed = copy.deepcopy(plain)
    set_grad_checkpointing(checkpointed)
    images = torch.randint(0, 256, (6, 64, 64), dtype=torch.uint8)
    labels = torch.randint(0, 3, (6,))
    _, plain_grads, _ = one_step(plain, images, labels, 6, "multiclass")
    _, ckpt_grads, _ = one_step(checkpointed, images, labels, 3, "multiclass")
    for g, f in zip(ckpt_grads, plain_grads):
        torch.testing.assert_close(g, f, rtol=1e-4, atol=1e-6)
    assert saved_bytes(checkpointed) < saved_bytes(plain) / 3


def saved_bytes(model) -> int:
    """Bytes autograd keeps for backward in one forward of 4 images (checkpointing's own saves included)."""
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel() * t.element_size()) or t,
                                                  lambda t: t):
        model.train()(torch.zeros(4, 3, 64, 64))
    return sum(saved)


def test_the_reference_multilabel_loss_steps_batch_over_labels_times_further_in_any_micro_batches():
    """multilabel_loss batch_sum: BCE summed over the batch and averaged over the labels (the reference's
    loop), by hand; micro-batches give the same gradients; a multiclass task is untouched."""
    torch.manual_seed(0)
    spec = ModelSpec("tiny_vit", "random", 3, "multilabel", protocols.get("finetune").params().method())
    model = build_classifier(spec)
    images = torch.randint(0, 256, (12, 64, 64), dtype=torch.uint8)
    labels = torch.randint(0, 2, (12, 3)).float()

    def grads(micro, batch_sum):
        m = copy.deepcopy(model)
        accumulate_gradients(m, m, images, labels, micro, "multilabel", augment=False, batch_sum=batch_sum)
        return [p.grad.clone() for p in trainable_parameters(m)]

    by_hand = copy.deepcopy(model)
    logits = by_hand(images)
    loss = sum(torch.nn.functional.binary_cross_entropy_with_logits(logits[i, c], labels[i, c])
               for i in range(12) for c in range(3)) / 3
    loss.backward()
    want = [p.grad.clone() for p in trainable_parameters(by_hand)]
    mean = grads(12, False)
    for micro in (12, 5):
        for g, w, m in zip(grads(micro, True), want, mean):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(g, m * 12 / 3, rtol=1e-4, atol=1e-6)
