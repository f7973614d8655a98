"""What every protocol, frozen or trainable, uses to select honestly: labels, validation, choice.

The reference code selected on the test set whenever a run was given no validation set, and its
kNN and ML-kNN reported every k on test. Here every protocol chooses on validation: a task without a
val split gets one carved from its TRAIN split, by patient, seeded; the test split is read only
after the choice is made, to score the chosen configuration once.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple, TypeVar

import numpy as np

from raddist.protocols.base import Prediction, SplitData

T = TypeVar("T")
VAL_FRACTION = 0.15  # share of train patients carved off when the manifest has no val split
CARVE_STREAM = 0x7A1  # keeps the carve's random stream apart from other uses of the same seed


def labels_of(table, task_type: str, label_columns: Sequence[str]) -> np.ndarray:
    """A manifest's labels: multiclass (N,) class indices; multilabel/binary (N, C) in {0, 1}."""
    if task_type == "multiclass":
        return np.asarray(table[label_columns[0]].to_pylist(), dtype=np.int64)
    return np.stack([np.asarray(table[c].to_pylist(), dtype=np.int64) for c in label_columns], axis=1)


def carve_patients(patient_ids: np.ndarray, seed: int, val_fraction: float = VAL_FRACTION) -> np.ndarray:
    """Which rows go to a validation split carved by patient: a seeded share of the patients, never
    all of them, with every image of a drawn patient."""
    patients = np.unique(patient_ids)
    if len(patients) < 2:
        raise ValueError("cannot carve a validation split: the train split has fewer than 2 patients")
    n_val = int(min(len(patients) - 1, max(1, round(val_fraction * len(patients)))))
    rng = np.random.default_rng([seed, CARVE_STREAM])
    return np.isin(patient_ids, rng.choice(patients, n_val, replace=False))


def train_val_split(inputs, seed: int, val_fraction: float = VAL_FRACTION) -> Tuple[SplitData, SplitData]:
    """(train, val) of FrozenInputs or SegInputs: the manifest's val split, or one carved from train
    by patient."""
    train = inputs.splits["train"]
    val = inputs.splits.get("val")
    if val is not None and len(val) > 0:
        return train, val
    return carve_val(train, seed, val_fraction)


def carve_val(train, seed: int, val_fraction: float = VAL_FRACTION):
    """Split train (SplitData or SegSplit) into (train, val) by patient, so no patient's images land
    on both sides."""
    is_val = carve_patients(train.patient_ids, seed, val_fraction)
    return train.subset(np.flatnonzero(~is_val)), train.subset(np.flatnonzero(is_val))


def train_plus_val(train: SplitData, val: SplitData) -> SplitData:
    """The final fitting set once the hyperparameters are chosen."""
    return SplitData(
        features={k: np.concatenate([train.features[k], val.features[k]]) for k in train.features},
        labels=np.concatenate([train.labels, val.labels]),
        sample_ids=np.concatenate([train.sample_ids, val.sample_ids]),
        patient_ids=np.concatenate([train.patient_ids, val.patient_ids]),
    )


def macro_auroc(targets: np.ndarray, scores: np.ndarray) -> float:
    """Mean AUROC over the columns that have both classes; NaN when none has.

    targets, scores: (N, C). A rare label absent from a small validation split is skipped rather
    than failing the whole selection.
    """
    from sklearn.metrics import roc_auc_score

    aucs = [
        roc_auc_score(targets[:, c], scores[:, c])
        for c in range(targets.shape[1])
        if 0 < targets[:, c].sum() < len(targets)
    ]
    return float(np.mean(aucs)) if aucs else float("nan")


def select_best(candidates: Sequence[T], score: Callable[[T], float]) -> Tuple[T, float, List[float]]:
    """(best candidate, its score, every score). Ties go to the earliest candidate, so callers list
    the preferred ones first (lower lr, smaller k, stronger regularisation); NaN never wins."""
    scores = [float(score(c)) for c in candidates]
    ranked = [s if np.isfinite(s) else -np.inf for s in scores]
    best = int(np.argmax(ranked))  # argmax returns the first of equal maxima
    return candidates[best], scores[best], scores


def to_prediction(test: SplitData, scores: np.ndarray, selected: dict, val_score: float) -> Prediction:
    return Prediction(
        sample_ids=test.sample_ids,
        patient_ids=test.patient_ids,
        labels=test.labels,
        scores=np.asarray(scores, dtype=np.float64),
        selected=selected,
        val_score=val_score,
    )


# Splits named test:<name> are further test sets (another hospital's test split, the test images
# corrupted): the head selected on validation scores each of them, as it scores test, and nothing
# else reads them.
EXTRA_TEST = "test:"


def extra_tests(splits: Dict[str, SplitData]) -> Dict[str, SplitData]:
    return {name[len(EXTRA_TEST):]: split for name, split in splits.items() if name.startswith(EXTRA_TEST)}


def scored(splits: Dict[str, SplitData], predict: Callable[[SplitData], np.ndarray], selected: dict,
           val_score: float) -> Prediction:
    """The test split's prediction by the selected head (predict: a split -> its scores), with every
    further test set's in .extra, by the same head."""
    test = splits["test"]
    prediction = to_prediction(test, predict(test), selected, val_score)
    prediction.extra = {name: to_prediction(split, predict(split), selected, val_score)
                        for name, split in extra_tests(splits).items()}
    return prediction

