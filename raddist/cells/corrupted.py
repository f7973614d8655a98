"""A cell's corrupted test splits (raddist.robustness): the task's test rows re-embedded under each
corruption x severity, joined as further test sets `test:corruption/<kind>/<severity>` beside the clean
splits, and the paired drop of each from the clean test set.

The train and val splits are the clean job's, untouched: a corrupted job holds the test rows only
(raddist.embed.jobs), and its labels, patients and sample ids are the clean test split's own, row for
row (a row that failed to decode under the corruption drops out of that set alone); slices of volumes
are pooled per volume as the clean ones are (whole NIfTI volumes are not corrupted: raddist.embed.jobs
fails their jobs in one line, and the cells score without them). The protocol
scores each with the head it selected on the clean validation split (protocols.selection.scored).
The drop is paired: the same test patients under both, so one patient bootstrap resamples both
(raddist.paired.paired_all), and its CI is that of the difference.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List

import numpy as np

from raddist.data import manifest as manifest_lib
from raddist.protocols.base import FrozenInputs, SplitData
from raddist.protocols.selection import EXTRA_TEST
from raddist.robustness import PREFIX

DROP = "drop"  # corruption/<kind>/<severity>/drop/<metric>: clean minus corrupted, on the same patients
DROP_METRICS = ("auroc", "balanced_accuracy")


def with_corrupted(inputs: FrozenInputs, task, keys: Dict[str, str], cache_root: str, salt: str) -> FrozenInputs:
    """The inputs with a split test:corruption/<kind>/<severity> per corrupted job whose features are
    cached (keys: test-set name -> cache key; other names are not this module's). A corrupted job that
    failed (volumes: raddist.embed.jobs refuses them) adds no split."""
    from raddist.embed.cache import EmbeddingCache

    cache = EmbeddingCache(cache_root)
    corrupted = {n: k for n, k in sorted(keys.items()) if n.startswith(PREFIX) and cache.check(k) is None}
    if not corrupted or "test" not in inputs.splits:
        return inputs
    table = manifest_lib.load(task.manifest, salt)  # the clean job's manifest, in its order
    test_rows = np.flatnonzero(np.asarray(table["split"].to_pylist(), dtype=object) == "test")
    test = inputs.splits["test"]
    splits = dict(inputs.splits)
    for name, key in corrupted.items():
        cached = cache.load(key)
        _check_rows(task, name, cached, test_rows)
        ids, features = _by_sample_id(task, table, cached)
        position = {sid: i for i, sid in enumerate(ids)}
        keep = np.asarray([i for i, s in enumerate(test.sample_ids) if s in position], np.int64)
        take = np.asarray([position[test.sample_ids[i]] for i in keep], np.int64)
        splits[EXTRA_TEST + name] = SplitData(features={k: v[take] for k, v in features.items()},
                                              labels=test.labels[keep], sample_ids=test.sample_ids[keep],
                                              patient_ids=test.patient_ids[keep])
    return dataclasses.replace(inputs, splits=splits)


def _by_sample_id(task, table, cached):
    """(the sample id of each feature row, the features) as the clean test split names its rows: per image,
    or per volume for slices of volumes, pooled as the clean ones are (cells.inputs.pooled_volumes)."""
    if "volume_id" in table.column_names:
        from raddist.cells.inputs import pooled_volumes

        vol_table, pooled = pooled_volumes(task, table, cached, task.pool)
        return vol_table["sample_id"].to_pylist(), pooled.features
    return np.asarray(table["sample_id"].to_pylist(), dtype=object)[cached.rows].tolist(), cached.features


def _check_rows(task, name: str, cached, test_rows: np.ndarray) -> None:
    """A corrupted job covers exactly the manifest's test rows (embedded or failed), nothing else."""
    got = np.sort(np.concatenate([cached.rows, np.asarray(cached.errors["row"].to_pylist(), np.int64)]))
    if not np.array_equal(got, test_rows):
        raise ValueError(f"task '{task.name}': the {name} embeddings {cached.key} cover {len(got)} rows, not the "
                         f"manifest's {len(test_rows)} test rows: the cache entry is not this task's; delete it and rerun")


def drop_rows(cell, prediction, class_names, n_boot: int) -> List[dict]:
    """corruption/<kind>/<severity>/drop/<metric>: the clean test value minus the corrupted one on the same
    rows, with the percentile CI of a paired patient bootstrap (the same resampled patients for both)."""
    from raddist.metrics import ALPHA, group_codes, normalize
    from raddist.paired import paired_all

    rows = []
    index = {sid: i for i, sid in enumerate(prediction.sample_ids)}
    for name, extra in sorted(getattr(prediction, "extra", {}).items()):
        if not name.startswith(PREFIX):
            continue
        idx = np.asarray([index[s] for s in extra.sample_ids], np.int64)
        labels, clean = normalize(cell.task.type, prediction.labels[idx], prediction.scores[idx])
        corrupted = normalize(cell.task.type, labels, extra.scores)[1]
        codes, n_groups = group_codes(extra.patient_ids)
        res = paired_all(cell.task.type, [(labels, clean, corrupted, codes)], list(class_names), n_groups, n_boot,
                         cell.seed, ALPHA)
        for metric in DROP_METRICS:
            r = res[metric]
            rows.append({"metric": f"{name}/{DROP}/{metric}", "value": float(r["diff"]), "ci_low": r["ci_low"],
                         "ci_high": r["ci_high"],
                         "n_undefined": int(r["note"].split()[2]) if r["note"] else 0})  # "undefined in k of B"
    return rows
