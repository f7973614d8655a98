"""External validation: a task's heads, selected on its own validation split, scored on another dataset.

A task lists further test sets (`external:` in its spec, spec.ExternalSpec): another hospital's
manifest, with a label map where its label columns are named otherwise. Each is embedded by every
backbone under the task's own contract (an embedding job of its own, cached and deduplicated like any
other: raddist.plan), joined as a split `test:external/<name>` with placeholder labels
(raddist.cells.inputs), and scored by the head the protocol selected on the task's validation split
(protocols.selection.scored). Its true labels are read only after the protocol has returned
(attach_labels), right before scoring: no protocol can select on them. The drop (in-domain minus
external) gets its CI from the two patient bootstraps, drawn independently: the two test sets hold
different patients (drop_rows).
"""

from __future__ import annotations

from typing import Dict, List

import numpy as np

PREFIX = "external/"  # test-set names, and so the metric rows: external/<name>/<metric>
DROP = "drop"  # external/<name>/drop/<metric>: in-domain minus external
DROP_METRICS = ("auroc", "balanced_accuracy")
EXTERNAL_STREAM = 0xE87  # the external bootstrap's random stream, apart from the in-domain one's


def test_name(ext) -> str:
    return PREFIX + ext.name


def check_externals(task) -> None:
    """A task's external test sets, checked with the spec: unique names, classification only, and a
    label map onto this task's labels."""
    if not task.external:
        return
    if task.type == "segmentation":
        raise ValueError("external: external test sets score classification heads; a segmentation task has none")
    seen = set()
    for ext in task.external:
        where = f"external '{ext.name}'"
        if ext.name in seen:
            raise ValueError(f"{where}: the name is used twice; give each external test set its own name")
        seen.add(ext.name)
        unknown = [t for t in ext.label_map.values() if t not in task.labels]
        if unknown:
            raise ValueError(f"{where}: label_map maps onto {unknown[0]!r}, not a label of this task "
                             f"(labels: {list(task.labels)})")
        targets = list(ext.label_map.values())
        if len(set(targets)) != len(targets):
            raise ValueError(f"{where}: label_map maps two columns onto one label: {ext.label_map}")


def source_columns(task, ext) -> List[str]:
    """The external manifest's column for each of the task's labels, in the task's order."""
    inverse = {target: column for column, target in ext.label_map.items()}
    return [inverse.get(label, label) for label in task.labels]


def external_task(task, ext):
    """The task as its external test set's embedding job sees it: the external manifest, its columns."""
    return task.model_copy(update={"name": f"{task.name}:{test_name(ext)}", "manifest": ext.manifest,
                                   "labels": source_columns(task, ext), "external": [], "subgroups": []})


def check_manifest(task, ext, table) -> None:
    """One line when the external manifest lacks a label column (after the map) or the split to score."""
    from raddist.errors import ConfigError

    where = f"task '{task.name}': external '{ext.name}' ({ext.manifest})"
    for label, column in zip(task.labels, source_columns(task, ext)):
        if column not in table.column_names:
            mapped = f" (label_map: {ext.label_map})" if ext.label_map else " (map it with label_map)"
            raise ConfigError(f"{where}: no label column {column!r} for the task's label {label!r}{mapped}; "
                             f"its columns: {table.column_names}")
    if ext.split != "all" and ext.split not in set(table["split"].to_pylist()):
        raise ConfigError(f"{where}: split: no '{ext.split}' rows; use 'all' to score every row")


def rows_scored(ext, split_column) -> np.ndarray:
    """The external manifest's rows its test set holds: its chosen split, or every row ('all')."""
    split_column = np.asarray(split_column, dtype=object)
    return np.ones(len(split_column), bool) if ext.split == "all" else split_column == ext.split


def true_labels(task, ext, table, sample_ids) -> np.ndarray:
    """The external labels of the scored samples (rows, or volumes), in this task's label order."""
    from raddist.protocols.selection import labels_of

    check_manifest(task, ext, table)
    labels = labels_of(table, task.type, source_columns(task, ext))
    ids = table["volume_id" if "volume_id" in table.column_names else "sample_id"].to_pylist()
    first: Dict[str, int] = {}
    for i, sample in enumerate(ids):
        first.setdefault(sample, i)
    return labels[np.asarray([first[s] for s in sample_ids], np.int64)]


def attach_labels(cell, prediction, salt: str) -> None:
    """Put the external test sets' true labels into the prediction: called after the protocol returned,
    so that nothing before scoring could read them."""
    from raddist.data import manifest as manifest_lib

    for ext in cell.task.external:
        extra = prediction.extra.get(test_name(ext))
        if extra is not None:
            extra.labels = true_labels(cell.task, ext, manifest_lib.load(ext.manifest, salt), extra.sample_ids)


def drop_rows(cell, prediction, class_names, n_boot: int) -> List[dict]:
    """external/<name>/drop/<metric>: in-domain minus external, its CI the percentiles of the difference
    of the two patient bootstraps, drawn independently (different patients, different streams)."""
    from raddist.metrics import ALPHA, bootstrap_replicates, classification_metrics, percentile_ci

    extras = {n: p for n, p in sorted(prediction.extra.items()) if n.startswith(PREFIX)}
    if not extras:
        return []
    task_type = cell.task.type

    def values(p, seed):
        point = classification_metrics(task_type, p.labels, p.scores, class_names)
        reps = (bootstrap_replicates(task_type, p.labels, p.scores, class_names, p.patient_ids, n_boot, seed)
                if n_boot > 0 else {})
        return point, reps

    inside, inside_reps = values(prediction, cell.seed)
    rows = []
    for name, extra in extras.items():
        outside, outside_reps = values(extra, [cell.seed, EXTERNAL_STREAM])
        for metric in DROP_METRICS:
            low, high = (percentile_ci(inside_reps[metric] - outside_reps[metric], ALPHA) if n_boot > 0
                         else (float("nan"), float("nan")))
            rows.append({"metric": f"{name}/{DROP}/{metric}", "value": float(inside[metric] - outside[metric]),
                         "ci_low": low, "ci_high": high, "n_undefined": 0})
    return rows


def check_before_ray(task, data_roots) -> None:
    """Each external manifest, checked as the task's own are before Ray starts: present, valid, its label
    columns (after the map) and its split there, its images under the allowed roots."""
    from raddist.data import manifest as manifest_lib

    for ext in task.external:
        table = manifest_lib.load(ext.manifest)
        check_manifest(task, ext, table)
        manifest_lib.validate(table, ext.manifest, source_columns(task, ext), task.type,
                              len(task.classes) if task.classes else None)
        manifest_lib.check_roots(ext.manifest, data_roots)


def manifest_uris(task) -> Dict[str, str]:
    """<task>:external/<name> -> its manifest: where `raddist errors --reveal` finds an external job's rows."""
    return {external_task(task, ext).name: ext.manifest for ext in task.external}
