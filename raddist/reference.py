"""How raddist differs from the reference study's code (MohammedSB/DINOv2ForRadiology, read at cb91e01),
so that a report can say which numbers are comparable with the paper's and which are not.

Two modes of the shipped grid (spec `mode`):
  reference  `raddist plan paper`: the reference's settings wherever raddist has them, as the
             protocols' params of paper.yaml (SETTINGS lists each; the report names those in force).
  raddist    `raddist plan paper-recommended`: raddist's defaults, chosen to make comparisons fair
             (selection of k on validation, heads trained to a plateau, ...).
Either way the defects of the reference code are not reproduced (selection on test, validation data
in few-shot training, unseeded single draws); they are listed in ALWAYS for what they are, with
what raddist cannot reproduce.
"""

from __future__ import annotations

import json
from typing import Iterable, List, Tuple, Union

# What raddist does differently in BOTH modes: (what, the reference, raddist).
ALWAYS = [
    ("model selection", "on test when a run was given no validation set; kNN and ML-kNN report every k on test",
     "on validation only; a task without one gets it carved from train by patient"),
    ("few-shot training set", "refit on the k-shot set plus the whole validation set (a bug: shots != None)",
     "the k-shot draw alone"),
    ("few-shot draws", "one deterministic draw: the first k patients by id (NIH), k evenly spaced images in all "
     "(others)", "k per class, seeded, several draws (mean ± std)"),
    ("LoRA and BitFit", "never trained: the backbone ran under torch.no_grad(), so a PEFT run was a linear probe",
     "the adapters or biases train (peft)"),
    ("fine-tuning refit", "a new head on train+val over the frozen fine-tuned backbone",
     "the checkpoint chosen on validation scores test"),
    ("augmentation of frozen features", "online (random crop, flip) while embedding each epoch",
     "none: features are computed once and cached"),
    ("confidence intervals", "none", "95% patient-level bootstrap on every metric"),
    ("segmentation grid", "Dice pooled over all test pixels at 448 px; the Jaccard drops background-target pixels",
     "per case and pooled, on each scan's own grid; background scored nowhere"),
    ("normalisation", "ImageNet mean/std for every backbone, per-image min-max", "each backbone's own mean/std"),
    ("backbone weights", "ViT-L google/vit-large-patch16-224, ResNet-152 V2, VGG-19 fc7, BiomedCLIP projection",
     "timm's augreg ViT-L IN-21k, ResNet-152 V1, VGG-19 conv stages, BiomedCLIP trunk"),
    ("splits", "the reference's own picks (every n-th image, by row)", "by patient, seeded (the catalog's)"),
    # not reproduced: no setting of raddist's has the reference's behaviour
    ("segmentation decoders", "its UNet (no stem, widths D/2..D/8, 3x3 skips, bicubic resize), tokens after the "
     "final LayerNorm, heads initialised N(0, 0.01), augmented 448 px inputs", "raddist's UNet decoder "
     "(seg_unet.py), PyTorch's initialisation, cached tokens without augmentation"),
    ("kNN on multilabel tasks", "DINOv2's vote over one-hot single labels (its ML-kNN script for multilabel)",
     "per-label vote fractions"),
]

# What differs only in mode raddist (the reference mode takes the reference's setting).
RADDIST_ONLY = [
    ("kNN", "every k in {10, 20, 100, 200} reported", "k chosen on validation"),
    ("kNN votes", "bank of train only; weights a softmax over the largest k's neighbours; top-1 accuracy",
     "bank of train+val; weights normalised over the k voters; macro AUROC"),
    ("ML-kNN", "a sample counts as its own neighbour", "leave-one-out counts (Zhang & Zhou)"),
    ("linear probe", "lrs 1e-3..5e-2, 10 epochs, batch 128", "7 lrs 1e-4..1e-1, trained to a validation plateau"),
    ("linear-probe inputs", "raw features; learning rates as given",
     "features standardised on the fitting set; learning rates x batch / 256 (dinov2's rule)"),
    ("multilabel linear-probe loss", "BCE summed over the batch, averaged over labels (~17x the step on NIH)",
     "BCE summed over labels, averaged over the batch"),
    ("CNN linear probes", "the final pooled feature only", "the last 1 or 4 stages, with or without patch mean"),
    ("segmentation heads", "SGD (momentum 0.9, no weight decay), Dice loss, batch 128, raw tokens, 10 epochs "
     "(cosine), the chosen rate refit on train+val", "AdamW (weight decay 1e-4), DiceCE loss, batch 16, "
     "standardised tokens, trained to a validation plateau in epochs of at least 24 mini-batches, no refit"),
    ("LoRA biases", 'bias="lora_only": the adapted layers\' biases train', 'bias="none"'),
    ("fine-tuning, LoRA, BitFit optimiser", "SGD over a grid of 16 linear heads (lrs 1e-3..5e-2 x blocks x pools), "
     "the backbone at 1e-5", "AdamW (weight decay 0.05), one CLS head, the whole model at each rate of the grid"),
]

# The settings through which mode reference takes the reference's behaviour: (protocol, param (a
# nested one dotted), its value in paper.yaml, what it does). The report lists those in force.
SETTINGS = [
    ("knn", "bank", "train", "the chosen k votes over train alone"),
    ("knn", "vote_pool", 200, "vote weights a softmax over the nearest 200 (the largest k)"),
    ("knn", "select_by", "top1", "top-1 accuracy, the reference's kNN metric, ranks k on validation"),
    ("mlknn", "count_self", True, "a sample counts as its own neighbour"),
    ("linear", "stopping", "fixed", "exactly `epochs` epochs, cosine to zero"),
    ("linear", "multilabel_loss", "batch_sum", "multilabel BCE summed over the batch, averaged over labels"),
    ("linear", "lr_batch_scaling", False, "learning rates as given (not x batch / 256)"),
    ("linear", "normalize", "none", "raw features"),
    ("linear", "blocks", [1], "the last block only (a CNN's: its final pooled feature)"),
    ("fewshot", "validation", "full", "selection on the whole validation split"),
    ("fewshot", "linear.multilabel_loss", "batch_sum", "the linear probe's reference loss"),
    ("fewshot", "linear.lr_batch_scaling", False, "learning rates as given"),
    ("fewshot", "linear.normalize", "none", "raw features"),
    ("seg_linear", "optimizer", "sgd", "SGD, momentum 0.9"),
    ("seg_linear", "loss", "dice", "Dice loss"),
    ("seg_linear", "standardize", False, "tokens as cached"),
    ("seg_linear", "refit", True, "the chosen rate refit on train+val"),
    ("seg_linear", "stopping", "fixed", "exactly `epochs` epochs, cosine to zero"),
    ("seg_unet", "optimizer", "sgd", "SGD, momentum 0.9"),
    ("seg_unet", "loss", "dice", "Dice loss"),
    ("seg_unet", "standardize", False, "tokens as cached"),
    ("seg_unet", "refit", True, "the chosen rate refit on train+val"),
    ("seg_unet", "stopping", "fixed", "exactly `epochs` epochs, cosine to zero"),
    ("lora", "bias", "lora_only", "the adapted layers' biases train"),
    *[(name, key, value, what) for name in ("finetune", "lora", "bitfit") for key, value, what in (
        ("optimizer", "sgd", "SGD, momentum 0.9, no weight decay; the backbone at lrs (1e-5)"),
        ("multilabel_loss", "batch_sum", "multilabel BCE summed over the batch, averaged over labels"),
        ("head_grid.blocks", [1, 4], "16 linear heads at once (lrs 1e-3..5e-2 x the last 1 or 4 blocks x with or "
                                     "without the mean patch token), the best on validation scores test"))],
]


def _value(params: dict, dotted: str):
    for key in dotted.split("."):
        if not isinstance(params, dict) or key not in params:
            return None
        params = params[key]
    return params


def in_force(protocol_params: Iterable[Tuple[str, Union[str, dict]]]) -> List[tuple]:
    """(protocol, param, value, what) of every SETTINGS entry some run's params carry; protocol_params
    are (protocol, params as a dict or its JSON) pairs, e.g. a results table's columns."""
    seen = set()
    for protocol, params in protocol_params:
        params = json.loads(params) if isinstance(params, str) else params
        for i, (name, key, value, _) in enumerate(SETTINGS):
            if name == protocol and _value(params, key) == value:
                seen.add(i)
    return [SETTINGS[i] for i in sorted(seen)]


def deviations(mode: str) -> List[tuple]:
    """(what, the reference, raddist) for every known difference of a run in this mode."""
    return ALWAYS + (RADDIST_ONLY if mode == "raddist" else [])


def markdown(mode: str, results=None) -> str:
    """The report's section; results (a table with protocol and params columns), where given, names
    the reference settings in force."""
    lines = ["## How this run differs from the reference study", "",
             f"Mode **{mode}**" + (": the reference code's settings where raddist has them (`paper`)."
                                   if mode == "reference" else ": raddist's defaults (`paper-recommended`)."),
             "Known differences from MohammedSB/DINOv2ForRadiology (cb91e01):", "",
             "| what | reference | raddist |", "|---|---|---|"]
    lines += [f"| {w} | {r} | {o} |" for w, r, o in deviations(mode)]
    if results is not None and {"protocol", "params"} <= set(results):
        rows = in_force(set(zip(results["protocol"], results["params"])))
        if rows:
            lines += ["", "Reference settings in force (protocol params that take the reference code's behaviour):",
                      "", "| protocol | setting | what |", "|---|---|---|"]
            lines += [f"| {p} | `{k}: {json.dumps(v)}` | {w} |" for p, k, v, w in rows]
    return "\n".join(lines) + "\n"
