"""Evaluate one cell: cached features + manifest labels → protocol → test predictions → metrics.

Three shapes of input, by task and manifest:
  - images: one row of features per manifest row (FrozenInputs);
  - volumes for classification (cached rows carry a volume_id): the slices' features pooled into one
    row per volume, by the task's `pool` (mean, the reference's; or max), with each volume's slice
    features kept beside them as features['slices'] (attention_mil reads those);
  - segmentation: patch-token grids and masks per slice or image (seg_common.SegInputs).
"""

from __future__ import annotations

import dataclasses
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


def frozen_inputs(task: TaskSpec, table: pa.Table, cached: CachedEmbeddings):
    """Join cached features to the manifest's splits and labels; rows that failed to decode drop out."""
    if task.type == "segmentation":
        return seg_inputs(task, table, cached)
    if "volume_id" in table.column_names:  # slices (or whole volumes) of volumes: one row per volume
        table, cached = pooled_volumes(task, table, cached, getattr(task, "pool", "mean"))
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


def pooled_volumes(task: TaskSpec, table: pa.Table, cached: CachedEmbeddings, how: str = "mean"):
    """(one manifest row per volume, its pooled CachedEmbeddings): the slices' features averaged (or
    maxed) per volume; features['slices'] holds each volume's per-slice [cls | patch_mean] in slice
    order (an object array of (n_slices, F) float16). A volume's label is its rows' common label."""
    if how not in ("mean", "max"):
        raise ValueError(f"task '{task.name}': pool must be 'mean' or 'max', got {how!r}")
    labels = labels_of(table, task)
    first: Dict[str, int] = {}
    for i, v in enumerate(table["volume_id"].to_pylist()):
        j = first.setdefault(v, i)
        if not np.array_equal(labels[i], labels[j]):
            raise ValueError(f"task '{task.name}': volume '{v}' has slices with different labels")
    vids, slice_index = _slices_of(table, cached)
    present = set(vids.tolist())
    volumes = [v for v in first if v in present]  # manifest order
    code = {v: k for k, v in enumerate(volumes)}
    row_code = np.array([code.get(v, -1) for v in vids])
    order = np.lexsort((slice_index, row_code))
    order = order[row_code[order] >= 0]
    starts = np.searchsorted(row_code[order], np.arange(len(volumes)))
    reduce = np.maximum.reduceat if how == "max" else np.add.reduceat
    counts = np.diff(np.append(starts, len(order)))[:, None]
    pooled = {}
    for name, x in cached.features.items():
        out = reduce(x[order], starts, axis=0) if len(order) else x[:0]
        pooled[name] = (out / counts).astype(x.dtype) if how == "mean" else out
    per_slice = np.concatenate([cached.features[n] for n in ("cls", "patch_mean") if n in cached.features], axis=1)
    slices = np.empty(len(volumes), dtype=object)
    for k, rows in enumerate(np.split(order, starts[1:])):
        slices[k] = per_slice[rows].astype(np.float16)
    pooled["slices"] = slices
    vol_table = table.take(pa.array([first[v] for v in volumes], pa.int64()))
    vol_table = vol_table.set_column(vol_table.column_names.index("sample_id"), "sample_id", pa.array(volumes, pa.string()))
    return vol_table, dataclasses.replace(cached, sample_ids=np.asarray(volumes, dtype=object), features=pooled, rows=None)


def _slices_of(table: pa.Table, cached: CachedEmbeddings):
    """(volume id, slice index) of every cached row: as cached for expanded volumes, else from the
    manifest by sample id (a row the manifest no longer lists gets volume None and drops out)."""
    if cached.rows is not None and "volume_id" in cached.rows.column_names:
        return (np.asarray(cached.rows["volume_id"].to_pylist(), dtype=object),
                np.asarray(cached.rows["slice_index"].to_pylist(), dtype=np.int64))
    index = table["slice_index"].to_pylist() if "slice_index" in table.column_names else [0] * table.num_rows
    where = {sid: (v, z) for sid, v, z in zip(table["sample_id"].to_pylist(), table["volume_id"].to_pylist(), index)}
    pairs = [where.get(sid, (None, -1)) for sid in cached.sample_ids]
    return (np.asarray([v for v, _ in pairs], dtype=object),
            np.asarray([-1 if z is None else z for _, z in pairs], dtype=np.int64))


def seg_inputs(task: TaskSpec, table: pa.Table, cached: CachedEmbeddings):
    """Patch-token grids and masks per cached row, split by the manifest; a volume's slice rows
    (sample_id f"{volume_id}:{z}") belong to the manifest row of their volume."""
    from raddist.data.volumes import grid_spacing
    from raddist.embed.cache import tensor_column
    from raddist.protocols.seg_common import CaseGeometry, SegInputs, SegSplit

    classes = list(task.classes or [])
    if len(classes) < 2:
        raise ValueError(f"task '{task.name}': a segmentation task needs 'classes', the background first")
    rows, meta = cached.rows, cached.meta
    if rows is None or "mask" not in rows.column_names:
        raise ValueError(f"task '{task.name}': the cached embeddings hold no masks; was the job planned for segmentation?")
    volumes, sliced = bool(meta.get("volumes")), "volume_id" in rows.column_names
    vids = np.asarray(rows["volume_id"].to_pylist(), dtype=object) if sliced else None
    keys = vids if volumes else cached.sample_ids
    position = {k: i for i, k in enumerate(table["volume_id" if volumes else "sample_id"].to_pylist())}
    m_idx = np.array([position.get(k, -1) for k in keys], dtype=np.int64)
    split_of = np.asarray(table["split"].to_pylist(), dtype=object)[m_idx]
    split_of[m_idx < 0] = None
    patients = np.asarray(table["patient_id"].to_pylist(), dtype=object)[m_idx]
    case_ids = vids if sliced else cached.sample_ids
    slice_index = np.asarray(rows["slice_index"].to_pylist(), np.int64) if sliced else np.full(len(keys), -1)
    shapes = np.asarray(rows["shape"].to_pylist(), np.int64)
    affines = np.asarray(rows["affine"].to_pylist(), np.float64) if volumes else None
    size = int(meta["contract"]["size"])
    geometry: Dict[str, CaseGeometry] = {}
    for i, case in enumerate(case_ids):
        if case in geometry:
            continue
        if volumes:
            affine = affines[i].reshape(4, 4)
            geometry[case] = CaseGeometry(grid_spacing(shapes[i], size, affine), tuple(shapes[i]), affine)
        elif sliced:  # slices listed in a manifest: pixels in-plane, one slice apart
            depth = int((case_ids == case).sum())
            geometry[case] = CaseGeometry((1.0, *grid_spacing(shapes[i][1:], size)), (depth, *shapes[i][1:]))
        else:
            geometry[case] = CaseGeometry(grid_spacing(shapes[i][1:], size), tuple(shapes[i][1:]))
    tokens = [cached.dense[n] for n in meta["dense_names"]]
    masks = tensor_column(rows, "mask")
    splits = {}
    for split in manifest_lib.SPLITS:
        idx = np.flatnonzero(split_of == split)
        if len(idx):
            splits[split] = SegSplit([t[idx] for t in tokens], masks[idx], cached.sample_ids[idx], patients[idx],
                                     np.asarray(case_ids, dtype=object)[idx], slice_index[idx])
    for need in ("train", "test"):
        if need not in splits:
            raise ValueError(f"task '{task.name}': no decodable '{need}' images in {task.manifest}")
    return SegInputs(task_type="segmentation", class_names=classes, splits=splits, geometry=geometry,
                     volumetric=sliced)


def run_cell(cell: Cell, inputs: FrozenInputs, n_boot: int) -> tuple:
    """Returns (Prediction, metric rows, seconds)."""
    from raddist.metrics import score_prediction

    module = protocols.get(cell.protocol)
    params = module.Params(**cell.params)
    start = time.time()
    prediction: Prediction = module.run(inputs, params, cell.seed)
    if inputs.task_type == "segmentation":
        from raddist.seg_metrics import score_cases

        rows, per_case = score_cases(prediction.cases, inputs.class_names, n_boot=n_boot, seed=cell.seed)
        # per case and foreground class: present in the ground truth, and the Dice
        prediction.labels = (per_case["tp"] + per_case["fn"] > 0).astype(np.int64)
        prediction.scores = per_case["dice"]
    else:
        rows = score_prediction(inputs.task_type, prediction, inputs.class_names, n_boot=n_boot, seed=cell.seed)
    return prediction, rows, time.time() - start


def write_masks(prediction: Prediction, cell_dir: str, salt: str) -> int:
    """Predicted label maps of a segmentation cell, at the source's shape, into cell_dir/masks/:
    NIfTI volumes with the source's affine (<pseudonym>.nii.gz), 2D images as PNG. Returns the count."""
    from raddist import storage
    from raddist.data.volumes import nifti_bytes, png_bytes, resize_labels, to_source
    from raddist.privacy import pseudonym

    written = 0
    for case in getattr(prediction, "cases", []):
        name = storage.join(cell_dir, "masks", pseudonym(case.case_id, salt))
        if case.affine is not None:
            storage.write_bytes(name + ".nii.gz", nifti_bytes(to_source(case.pred, case.source_shape), case.affine))
        elif case.pred.ndim == 2:
            storage.write_bytes(name + ".png", png_bytes(resize_labels(case.pred, case.source_shape[-2:])))
        else:
            continue  # slices listed in a manifest: no source grid to write them on
        written += 1
    return written


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
