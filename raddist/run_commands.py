"""The commands that read a run's output, finished or in flight: report, export, status, errors,
compare. Each takes the argparse namespace the `raddist` command (raddist.cli) built."""

from __future__ import annotations

import argparse
import json

from raddist import storage
from raddist.errors import RaddistError

RUN_MARKERS = ("run.json", "progress.json", "summary.json", "report.md", "results.parquet", "predictions.parquet",
               "cases.parquet", "cells")  # what a run writes into its output; any one makes it a run


def run_output(path: str) -> str:
    """The normalised output of a raddist run, or one line: "not a raddist run: PATH"."""
    output = storage.normalize(path)
    if any(storage.exists(storage.join(output, name)) for name in RUN_MARKERS):
        return output
    raise RaddistError(f"not a raddist run: {path}")


def cmd_report(args) -> int:
    """The finished run's report.md; for a run in flight (or one that stopped before its report), the
    report of the cells finished so far, rendered from their files without writing anything."""
    from raddist.report_write import in_flight

    output = run_output(args.output)
    text = in_flight(output)
    if text is None and getattr(args, "published", None):  # written again with the user's published values
        from raddist.report_write import rewrite

        rewrite(output, args.published)
    print(text if text is not None else storage.read_text(storage.join(output, "report.md")))
    return 0


def cmd_export(args) -> int:
    """Each backbone x task's cached features as Parquet files other tools read (raddist.export)."""
    from raddist.export import export_embeddings

    written = export_embeddings(run_output(args.output), storage.normalize(args.embeddings))
    print(f"{len(written)} files written under {args.embeddings}")
    return 0


def cmd_status(args) -> int:
    """The run in flight (progress.json, its state and how long ago it last reported), else the last
    finished one's summary: never an old summary beside a run that is still going."""
    import time

    import pyarrow.fs as pafs

    output = run_output(args.output)
    fs, path = storage.filesystem(storage.join(output, "cells"))
    done = failed = 0
    for info in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=True)):
        name = info.path.rsplit("/", 1)[-1]
        done += name == "cell.json"
        failed += name == "failed.json"
    status = {"output": output, "cells_done": done, "cells_failed_attempts": failed}
    progress_uri = storage.join(output, "progress.json")
    progress = storage.read_json(progress_uri) if storage.exists(progress_uri) else None
    if progress:
        progress["seconds_since_update"] = round(time.time() - progress.get("updated", time.time()), 1)
        status["progress"] = progress
    summary_uri = storage.join(output, "summary.json")
    if (not progress or progress.get("state") == "finished") and storage.exists(summary_uri):
        status["summary"] = storage.read_json(summary_uri)
    print(json.dumps(status, indent=2))
    return 0


def cmd_errors(args) -> int:
    """The images a run could not read: pseudonym, manifest row, reason; --reveal adds each one's uri
    from the manifests, on a machine that holds the salt that wrote the run."""
    from raddist.privacy import deployment_salt, fingerprint

    output = run_output(args.output)
    uri = storage.join(output, "errors.parquet")
    if not storage.exists(uri):
        print("no input errors")
        return 0
    errors = storage.read_parquet(uri).to_pandas()
    if args.reveal:
        from raddist.data import manifest as manifest_lib

        record = storage.read_json(storage.join(output, "run.json"))
        salt = deployment_salt()
        if record.get("salt_fingerprint") != fingerprint(salt):
            raise RaddistError("this machine's salt did not write this run; --reveal needs the deployment's salt")
        manifests = record.get("manifests", {})
        uris = {task: manifest_lib.load(m)["uri"].to_pylist() for task, m in manifests.items()}
        errors["uri"] = [uris[t][r] if t in uris else "" for t, r in zip(errors["task"], errors["row"])]
    with pd_display():
        print(errors.to_string(index=False))
    return 0


def cmd_compare(args) -> int:
    from raddist.compare import compare_backbones

    output = run_output(args.output)
    frames = {}
    for name in ("predictions", "cases"):
        uri = storage.join(output, f"{name}.parquet")
        frame = storage.read_parquet(uri).to_pandas() if storage.exists(uri) else None
        if frame is not None and args.protocol:
            frame = frame[frame["protocol"].isin(args.protocol)]
        frames[name] = frame
    if not any(f is not None for f in frames.values()):
        raise RaddistError(f"{output} has no predictions.parquet or cases.parquet: is it a finished run?")
    try:
        table = compare_backbones(frames["predictions"], args.a, args.b, cases=frames["cases"], n_boot=args.bootstrap,
                                  seed=args.seed, keys=("task", "protocol", "params", "seed"))
    except ValueError as e:
        raise RaddistError(str(e)) from None
    with pd_display():
        print(table.drop(columns=["params"], errors="ignore").to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    sizes = sorted({int(b) for b in table.loc[table["test"] == "bootstrap", "n_boot"].dropna()})
    print(f"bootstrap tests: B = {' / '.join(f'{b:,}' for b in sizes) or 'none'} patient resamples, "
          + ("sized to the family (--bootstrap auto)" if args.bootstrap == "auto" else "from --bootstrap"))
    return 0


def bootstrap_arg(value: str):
    """--bootstrap: 'auto' or a number of resamples >= 0."""
    if value != "auto" and not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected a number of resamples or 'auto', not {value!r}")
    return value if value == "auto" else int(value)


def pd_display():
    import pandas as pd

    return pd.option_context("display.width", 200, "display.max_columns", 50)
