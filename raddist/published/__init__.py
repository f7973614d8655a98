"""Published numbers beside raddist's: the shipped tables (this folder's *.csv, each row with its
citation in `source`) and a user's own CSV (`raddist report OUTPUT --published FILE`).

A published row matches a result when task (or `dataset`), backbone, protocol and metric agree, and,
for few-shot, the number of shots; the report then shows the published value, raddist's value with
its 95% CI, and whether the published value lies inside the CI. Rows with `shots` "all" (the
full-data point of a few-shot figure) match no cell: which protocol produced them is not stated.
"""

from __future__ import annotations

from importlib import resources
from typing import Optional

import pandas as pd

from raddist.errors import RaddistError

REQUIRED = ("backbone", "protocol", "metric", "value", "source")


class PublishedError(RaddistError):
    pass


def shipped() -> list:
    """The names of the shipped tables."""
    return sorted(p.name for p in resources.files(__package__).iterdir() if p.name.endswith(".csv"))


def read_csv(uri: str) -> pd.DataFrame:
    """One published table, checked: a missing column or a value that is not a number is one line
    naming the file, the row (1 = the first data row) and the field."""
    import io

    from raddist import storage

    df = pd.read_csv(io.StringIO(storage.read_text(uri)), dtype=str, keep_default_na=False)
    if "task" not in df and "dataset" in df:
        df = df.rename(columns={"dataset": "task"})
    missing = [c for c in ("task",) + REQUIRED if c not in df]
    if missing:
        raise PublishedError(f"{uri}: no column {', '.join(missing)} (a published table needs task or dataset, "
                             f"{', '.join(REQUIRED)}; shots for few-shot rows)")
    for i, v in enumerate(df["value"], start=1):
        try:
            float(v)
        except ValueError:
            raise PublishedError(f"{uri}: row {i}, field value: '{v}' is not a number") from None
    df["value"] = df["value"].astype(float)
    if "shots" not in df:
        df["shots"] = ""
    df["table"] = uri.rsplit("/", 1)[-1]
    return df


def load(extra: Optional[str] = None) -> pd.DataFrame:
    """The shipped tables, then the user's (if any)."""
    frames = [read_csv(str(resources.files(__package__) / name)) for name in shipped()]
    if extra:
        frames.append(read_csv(extra))
    return pd.concat(frames, ignore_index=True)


def compare(published: pd.DataFrame, cells: pd.DataFrame, fewshot: pd.DataFrame) -> pd.DataFrame:
    """One row per published value that matches raddist's. cells: report.summary_table's rows (task,
    backbone, column, value, ci_low, ci_high) with `protocol` and `metric` columns; fewshot:
    report.fewshot_table's rows with a `metric` column, one row per probe (a published few-shot value
    names no probe, so it is shown beside each)."""
    keys = ["task", "backbone", "protocol", "metric"]
    out_cols = keys + ["column", "shots", "published", "value", "ci_low", "ci_high", "inside", "source"]
    pub = published.rename(columns={"value": "published"})
    is_few = pub["shots"].str.fullmatch(r"\d+")
    parts = []
    if not fewshot.empty and is_few.any():
        m = pub[is_few].astype({"shots": int}).merge(fewshot.assign(protocol="fewshot"), on=keys + ["shots"])
        parts.append(m.assign(column=[f"fewshot ({p})" if p else "fewshot" for p in m["probe"]]))
    if not cells.empty:
        parts.append(pub[pub["shots"] == ""].drop(columns="shots").merge(cells, on=keys).assign(shots=""))
    parts = [p for p in parts if not p.empty]
    if not parts:
        return pd.DataFrame(columns=out_cols)
    out = pd.concat(parts, ignore_index=True)
    out["inside"] = (out["ci_low"] <= out["published"]) & (out["published"] <= out["ci_high"])
    return out[out_cols].reset_index(drop=True)
