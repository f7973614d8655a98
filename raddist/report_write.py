"""Writing a run's report: report.md (raddist.report's tables and every section after them),
report.html and leaderboard.parquet; written again from a finished run's files, or rendered for a
run in flight without writing anything."""

from __future__ import annotations

from typing import Optional

import pandas as pd

from raddist import storage
from raddist.report import board_rows, cost_section, leaderboard, published_lines, render


def write_report(output: str, gathered: dict, summary: dict, published: Optional[str] = None) -> str:
    """report.md, report.html beside it, and leaderboard.parquet (the mean ranks across tasks).
    published: a user's CSV of published values, compared beside the shipped ones."""
    results = gathered["results"].to_pandas() if gathered.get("results") is not None else pd.DataFrame(
        columns=["task", "metric", "value", "protocol", "params"])
    task_types = dict(zip(results["task"], results["task_type"])) if "task_type" in results else {}
    from raddist.published import load
    from raddist.reference import markdown as deviations
    from raddist.report_backbones import backbones_section
    from raddist.report_choices import choices_section
    from raddist.report_html import write_html
    from raddist.report_search import search_section
    from raddist.report_trust import calibration_lines, external_lines, robustness_lines, subgroup_lines

    text = (render(results, summary, task_types, output=output)
            + "\n".join(calibration_lines(results, output) + subgroup_lines(results) + external_lines(results)
                      + robustness_lines(results)) + "\n"
            + "\n".join(published_lines(results, load(published))) + "\n"
            + cost_section(output, gathered.get("cells") or []) + "\n" + backbones_section(output)
            + choices_section(gathered.get("cells") or [], summary) + "\n"
            + search_section(gathered.get("cells") or [], output) + deviations(summary.get("mode", "raddist"), results))
    uri = storage.join(output, "report.md")
    storage.write_text(uri, text)
    write_html(output, text, board_rows(results, task_types), summary)
    _write_leaderboard(output, leaderboard(results, task_types))
    return uri


def _write_leaderboard(output: str, board: pd.DataFrame) -> None:
    """leaderboard.parquet: the mean ranks across tasks as rows shaped like results.parquet's (task
    'all', metric 'mean_rank'); removed when the run has fewer than two tasks to rank over."""
    import pyarrow as pa

    from raddist.ranking import mean_rank, result_rows

    uri = storage.join(output, "leaderboard.parquet")
    if board.empty or board["task"].nunique() < 2:
        if storage.exists(uri):
            storage.delete_file(uri)
        return
    storage.write_parquet(uri, pa.Table.from_pandas(result_rows(mean_rank(board), board), preserve_index=False))


def rewrite(output: str, published: Optional[str] = None) -> str:
    """The report of a finished run written again from its files (results.parquet, its cells'
    cell.json, summary.json): `raddist report OUTPUT --published FILE`."""
    from raddist.results import cell_dir, listing

    results_uri = storage.join(output, "results.parquet")
    results = storage.read_parquet(results_uri) if storage.exists(results_uri) else None
    done = sorted(c for c, names in listing(output).items() if "cell.json" in names)
    cells = [storage.read_json(storage.join(cell_dir(output, c), "cell.json")) for c in done]
    summary_uri = storage.join(output, "summary.json")
    summary = storage.read_json(summary_uri) if storage.exists(summary_uri) else {}
    return write_report(output, {"results": results, "cells": cells}, summary, published=published)


def in_flight(output: str) -> Optional[str]:
    """The report of a run that has not written its own (in flight, or stopped before its end): the cells
    finished so far, read from their files; nothing is written. None when the run's report.md is current."""
    import time

    from raddist.results import cell_dir, listing

    progress_uri = storage.join(output, "progress.json")
    progress = storage.read_json(progress_uri) if storage.exists(progress_uri) else None
    if storage.exists(storage.join(output, "report.md")) and (progress or {}).get("state") != "running":
        return None
    done = sorted(c for c, names in listing(output).items() if {"cell.json", "metrics.parquet"} <= names)
    frames = [storage.read_parquet(storage.join(cell_dir(output, c), "metrics.parquet")).to_pandas() for c in done]
    results = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["task", "metric", "value"])
    cells = (progress or {}).get("cells", {})
    summary = {"cells_done": len(done), "cells_total": cells.get("total", "?"), "cells_failed": cells.get("failed_now", 0)}
    if (progress or {}).get("state") == "running":
        ago = time.time() - progress.get("updated", time.time())
        note = f"Run in flight (progress.json: running, updated {ago:.0f} s ago): the cells finished so far."
    else:
        state = f" (progress.json: {progress.get('state')})" if progress else ""
        note = f"This run stopped before writing its report{state}: the cells it finished."
    task_types = dict(zip(results["task"], results["task_type"])) if "task_type" in results else {}
    return note + "\n\n" + render(results, summary, task_types, output=None)
