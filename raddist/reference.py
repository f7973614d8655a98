"""How raddist differs from the reference study's code (MohammedSB/DINOv2ForRadiology, read at cb91e01),
so that a report can say which numbers are comparable with the paper's and which are not.

Two modes of the shipped grid (spec `mode`):
  reference  `raddist plan paper`: the reference's settings wherever raddist has them (its k values
             reported one by one, its linear-probe grid and budget, ML-kNN counting each sample as its
             own neighbour, 448 px segmentation, SAM at 1024, the trainable protocols it had).
  raddist    `raddist plan paper-recommended`: raddist's defaults, chosen to make comparisons fair
             (selection of k on validation, heads trained to a plateau, ...).
Either way the defects of the reference code are not reproduced (selection on test, validation data
in few-shot training, unseeded single draws); they are listed here for what they are.
"""

from __future__ import annotations

from typing import List

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
    ("linear-probe inputs", "raw features; learning rates as given",
     "features standardised on the fitting set; learning rates × batch / 256 (dinov2's rule)"),
    ("backbone weights", "ViT-L google/vit-large-patch16-224, ResNet-152 V2, VGG-19 fc7, BiomedCLIP projection",
     "timm's augreg ViT-L IN-21k, ResNet-152 V1, VGG-19 conv stages, BiomedCLIP trunk"),
    ("splits", "the reference's own picks (every n-th image, by row)", "by patient, seeded (the catalog's)"),
]

# What differs only in mode raddist (the reference mode takes the reference's setting).
RADDIST_ONLY = [
    ("kNN", "every k in {10, 20, 100, 200} reported", "k chosen on validation"),
    ("ML-kNN", "a sample counts as its own neighbour", "leave-one-out counts (Zhang & Zhou)"),
    ("linear probe", "lrs 1e-3..5e-2, 10 epochs, batch 128", "7 lrs 1e-4..1e-1, trained to a validation plateau"),
]


def deviations(mode: str) -> List[tuple]:
    """(what, the reference, raddist) for every known difference of a run in this mode."""
    return ALWAYS + (RADDIST_ONLY if mode == "raddist" else [])


def markdown(mode: str) -> str:
    lines = ["## How this run differs from the reference study", "",
             f"Mode **{mode}**" + (": the reference code's settings where raddist has them (`paper`)."
                                   if mode == "reference" else ": raddist's defaults (`paper-recommended`)."),
             "Known differences from MohammedSB/DINOv2ForRadiology (cb91e01):", "",
             "| what | reference | raddist |", "|---|---|---|"]
    lines += [f"| {w} | {r} | {o} |" for w, r, o in deviations(mode)]
    return "\n".join(lines) + "\n"
