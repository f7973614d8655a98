"""Evaluate one cell: cached features + manifest labels → protocol → test predictions → metrics."""

from __future__ import annotations

import json
import time
from typing import Dict

import numpy as np
import pyarrow as pa

from raddist import protocols
from raddist.data import manifest as manifest_lib
from raddist.embed.cache import CachedEmbeddings
from raddist.plan import Cell
from raddist.protocols.base import FrozenInputs, Prediction, SplitData
from raddist.spec import TaskSpec


def labels_of(table: pa.Table, task: TaskSpec) -> np.ndarray:
    if task.type == "multiclass":
        return np.asarray(table[task.labels[0]].to_pylist(), dtype=np.int64)
    return np.stack([np.asarray(table[c].to_pylist(), dtype=np.int64) for c in task.labels], axis=1)


def frozen_inputs(task: TaskSpec, table: pa.Table, cached: CachedEmbeddings) -> FrozenInputs:
    """Join cached features to the manifest's splits and labels; rows that failed to decode drop out."""
    position = {sid: i for i, sid in enumerate(cached.sample_ids)}
    ids = table["sample_id"].to_pylist()
    keep = np.array([sid in position for sid in ids], dtype=bool)
    rows = np.array([position[sid] for sid, k in zip(ids, keep) if k], dtype=np.int64)
    table = table.filter(pa.array(keep))
    labels = labels_of(table, task)
    splits_col = np.asarray(table["split"].to_pylist(), dtype=object)
    patients = np.asarray(table["patient_id"].to_pylist(), dtype=object)
    sample_ids = np.asarray(table["sample_id"].to_pylist(), dtype=object)
    splits: Dict[str, SplitData] = {}
    for split in manifest_lib.SPLITS:
        idx = np.flatnonzero(splits_col == split)
        if len(idx) == 0:
            continue
        splits[split] = SplitData(
            features={k: v[rows[idx]] for k, v in cached.features.items()},
            labels=labels[idx],
            sample_ids=sample_ids[idx],
            patient_ids=patients[idx],
        )
    for need in ("train", "test"):
        if need not in splits:
            raise ValueError(f"task '{task.name}': no decodable '{need}' images in {task.manifest}")
    return FrozenInputs(task_type=task.type, class_names=task.class_names, block_dims=cached.block_dims, splits=splits)


def run_cell(cell: Cell, inputs: FrozenInputs, n_boot: int) -> tuple:
    """Returns (Prediction, metric rows, seconds)."""
    from raddist.metrics import score_prediction

    module = protocols.get(cell.protocol)
    params = module.Params(**cell.params)
    start = time.time()
    prediction: Prediction = module.run(inputs, params, cell.seed)
    rows = score_prediction(inputs.task_type, prediction, inputs.class_names, n_boot=n_boot, seed=cell.seed)
    return prediction, rows, time.time() - start


def predictions_table(cell: Cell, prediction: Prediction, salt: str) -> pa.Table:
    from raddist.privacy import pseudonym

    n = len(prediction.sample_ids)
    labels = np.asarray(prediction.labels)
    labels_list = labels.reshape(n, -1).tolist()
    return pa.table(
        {
            "cell_id": [cell.id] * n,
            "task": [cell.task.name] * n,
            "task_type": [cell.task.type] * n,
            "backbone": [cell.backbone.label] * n,
            "protocol": [cell.protocol] * n,
            "params": [json.dumps(cell.params, sort_keys=True)] * n,
            "seed": [cell.seed] * n,
            "sample_id": [pseudonym(s, salt) for s in prediction.sample_ids],
            "patient_id": [pseudonym(p, salt) for p in prediction.patient_ids],
            "labels": pa.array(labels_list, pa.list_(pa.int64())),
            "scores": pa.array(np.asarray(prediction.scores, dtype=np.float64).tolist(), pa.list_(pa.float64())),
        }
    )
