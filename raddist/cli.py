"""The `raddist` command: demo, plan, run, report, status, errors, compare, datasets."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
from typing import List, Optional

from raddist import storage
from raddist.errors import RaddistError
from raddist.run_commands import (bootstrap_arg, cmd_compare, cmd_errors, cmd_export, cmd_report,
                                    cmd_status)

# raddist starts or joins Ray itself (raddist.sweep.ensure_ray); Ray's implicit ray.init() on first use
# would, after a Ctrl-C, start a second cluster from a pipeline thread shutting down
os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")



def cmd_plan(args) -> int:
    from raddist.plan import make_plan
    from raddist.config import load

    spec = load(args.config)
    plan = make_plan(spec)  # planning reads no data: unset variables are only noted
    unset = sorted({var for _, var in spec.unset_vars})
    if unset:
        print(f"note: {', '.join('${' + v + '}' for v in unset)} not set; a run needs them", file=sys.stderr)
    print(json.dumps(plan.summary()) if args.json else plan.table())
    return 0


def cmd_check(args) -> int:
    """Every (backbone, image size) of the plan built and run once, trainable protocols one step: no Ray."""
    from raddist.check import report
    from raddist.plan import make_plan
    from raddist.config import load

    return report(make_plan(load(args.config)), weights=args.weights, device=args.device, json_out=args.json)


def cmd_run(args) -> int:
    from raddist.config import load
    from raddist.sweep import run_sweep

    overrides = {k: v for k, v in (("storage.cache", args.cache), ("storage.output", args.output)) if v}
    summary = run_sweep(load(args.config, overrides))
    if summary["state"] == "interrupted":
        return summary["exit_code"]  # its one line is said: 130 for Ctrl-C, 143 for SIGTERM
    print(json.dumps(summary, indent=2))
    return 0 if summary["cells_failed"] == 0 else 1


def cmd_demo(args) -> int:
    from raddist.data.synthetic import write_brain_mri, write_synthetic
    from raddist.data.synthetic_seg import write_synthetic_seg
    from raddist.config import load
    from raddist.sweep import run_sweep

    data = storage.normalize(args.data)
    if not os.path.exists(os.path.join(data, "chest", "manifest.parquet")):
        print(f"writing the synthetic dataset to {data}")
        write_synthetic(data)
    else:
        print(f"using the dataset in {data}")
    if not os.path.exists(os.path.join(data, "volcls", "manifest.parquet")):
        write_synthetic_seg(data)  # 2D and 3D segmentation, 3D classification
    if not os.path.exists(os.path.join(data, "brain_mri_site_b", "manifest.parquet")):
        write_brain_mri(os.path.join(data, "brain_mri_site_b"), n_patients=16, site_b=True)  # external validation
    os.environ["RADDIST_DEMO_DATA"] = data  # the demo config reads ${RADDIST_DEMO_DATA}
    overrides = {k: v for k, v in (("storage.cache", args.cache), ("storage.output", args.output)) if v}
    summary = run_sweep(load(args.config, overrides))
    if summary["state"] == "interrupted":
        return summary["exit_code"]
    output = storage.normalize(args.output)
    print()
    print(storage.read_text(storage.join(output, "report.md")))
    print(json.dumps(summary, indent=2))
    print(f"\nresults:     {storage.join(output, 'results.parquet')}")
    print(f"predictions: {storage.join(output, 'predictions.parquet')}")
    print(f"report:      {storage.join(output, 'report.md')}")
    print(f"embeddings:  {summary['cache']}")
    return 0 if summary["cells_failed"] == 0 else 1


def cmd_datasets(args) -> int:
    if args.datasets_cmd == "synth":
        from raddist.data.synthetic import write_synthetic
        from raddist.data.synthetic_seg import write_synthetic_seg

        manifests = write_synthetic(storage.normalize(args.out), seed=args.seed)
        manifests.update(write_synthetic_seg(storage.normalize(args.out), seed=args.seed))
        for name, uri in manifests.items():
            print(f"{name}: {uri}")
        return 0
    if args.datasets_cmd == "groups":
        from raddist.data.dicom_groups import add_groups
        from raddist.privacy import deployment_salt

        counts = add_groups(storage.normalize(args.manifest), storage.normalize(args.out), deployment_salt())
        print(json.dumps({"manifest": args.out, "groups": counts}, indent=2))
        return 0
    from raddist.data import catalog

    if args.datasets_cmd == "list":
        items = catalog.list_datasets()
        if args.json:
            print(json.dumps(items, indent=2))
        else:
            for d in items:
                print(f"{d['name']:<22} {d['modality']:<3} {d['task_type']:<13} {d['unit']:<7} {d['source_url']}")
        return 0
    opts = _parse_opts(args.opt, catalog.options(args.name))
    uri = catalog.prepare(args.name, args.source, args.dest, seed=args.seed, **opts)
    print(f"manifest: {uri}")
    return 0


def _parse_opts(pairs: List[str], defaults: dict) -> dict:
    """--opt key=value, converted to the type of the option's default."""
    opts = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise RaddistError(f"--opt takes key=value, got '{pair}'")
        default = defaults.get(key)
        if isinstance(default, bool):
            opts[key] = value.lower() in ("1", "true", "yes")
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            opts[key] = float(value) if ("." in value or isinstance(default, float)) else int(value)
        else:
            opts[key] = value
    return opts


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="raddist", description=__doc__)
    p.add_argument("--debug", action="store_true", help="print tracebacks of errors, not one line")
    sub = p.add_subparsers(dest="cmd", required=True)

    demo = sub.add_parser("demo", help="synthetic data → the demo sweep on a local Ray cluster")
    demo.add_argument("--data", default="raddist-demo/data", help="dataset directory (written if absent)")
    demo.add_argument("--output", default="raddist-demo/output")
    demo.add_argument("--config", default="demo", help="a config file, or a shipped config's name")
    demo.add_argument("--cache", default=None, help="embedding cache (default $RADDIST_CACHE or ~/.cache/raddist)")
    demo.set_defaults(fn=cmd_demo)

    plan = sub.add_parser("plan", help="print the cells and embedding jobs of a sweep")
    plan.add_argument("config")
    plan.add_argument("--json", action="store_true")
    plan.set_defaults(fn=cmd_plan)

    chk = sub.add_parser("check", help="build every backbone of a sweep and run each image size once; "
                         "estimate each trainable cell's GPU memory and placement (no Ray)")
    chk.add_argument("config")
    chk.add_argument("--weights", default=None, help="'random': the real architectures at random init "
                     "(default: each backbone's configured weights)")
    chk.add_argument("--device", default=None, choices=["meta", "cpu", "cuda"],
                     help="default: meta (shapes only) for random weights, else cuda if present, else cpu")
    chk.add_argument("--json", action="store_true")
    chk.set_defaults(fn=cmd_check)

    run = sub.add_parser("run", help="run a sweep; reruns do only what is missing")
    run.add_argument("config")
    run.add_argument("--output", default=None, help="output URI (default: the spec's storage.output)")
    run.add_argument("--cache", default=None)
    run.set_defaults(fn=cmd_run)

    report = sub.add_parser("report", help="print a run's report")
    report.add_argument("output")
    report.add_argument("--published", metavar="FILE", help="a CSV of published values (task or dataset, backbone, "
                        "protocol, metric, value, source; shots for few-shot) to show beside this run's")
    report.set_defaults(fn=cmd_report)

    export = sub.add_parser("export", help="a run's embeddings as Parquet files other tools read")
    export.add_argument("output")
    export.add_argument("--embeddings", metavar="DIR", required=True, help="where to write <backbone>/<task>/")
    export.set_defaults(fn=cmd_export)

    status = sub.add_parser("status", help="cells done, running and failed of a sweep in flight or finished")
    status.add_argument("output")
    status.set_defaults(fn=cmd_status)

    errors = sub.add_parser("errors", help="the images a run could not read, and why")
    errors.add_argument("output")
    errors.add_argument("--reveal", action="store_true", help="add each image's uri (needs the run's salt)")
    errors.set_defaults(fn=cmd_errors)

    compare = sub.add_parser("compare", help="paired comparison of two backbones on the same test items")
    compare.add_argument("output")
    compare.add_argument("--a", required=True)
    compare.add_argument("--b", required=True)
    compare.add_argument("--bootstrap", type=bootstrap_arg, default="auto",
                         help="patient resamples of the bootstrap tests, or 'auto' (default): sized to the largest "
                              "family so that Holm can reach alpha (raddist.compare.family_bootstrap)")
    compare.add_argument("--seed", type=int, default=0)
    compare.add_argument("--protocol", action="append", help="only these protocols (repeatable)")
    compare.set_defaults(fn=cmd_compare)

    ds = sub.add_parser("datasets", help="synthetic data and the reference study's datasets")
    dsub = ds.add_subparsers(dest="datasets_cmd", required=True)
    synth = dsub.add_parser("synth", help="write the synthetic radiology dataset")
    synth.add_argument("--out", required=True)
    synth.add_argument("--seed", type=int, default=0)
    lst = dsub.add_parser("list", help="the dataset catalog")
    lst.add_argument("--json", action="store_true")
    prep = dsub.add_parser("prepare", help="official download → manifest with the reference splits")
    prep.add_argument("name")
    prep.add_argument("--source", required=True)
    prep.add_argument("--dest", required=True)
    prep.add_argument("--seed", type=int, default=0)
    prep.add_argument("--opt", action="append", metavar="KEY=VALUE", help="dataset option, e.g. val_size=3")
    groups = dsub.add_parser("groups", help="sex, age band, manufacturer and a site pseudonym from DICOM headers, "
                                            "as subgroup columns of a copy of a manifest")
    groups.add_argument("manifest")
    groups.add_argument("--out", required=True, help="where the manifest with the columns is written")
    ds.set_defaults(fn=cmd_datasets)
    return p


def _debug_everywhere(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """--debug after any subcommand too (raddist run X --debug), not only before it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if "--debug" not in sub._option_string_actions:
                    sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                     help="print tracebacks of errors, not one line")
                _debug_everywhere(sub)
    return parser


@contextlib.contextmanager
def ray_output_to_logs():
    """Ray's own notices stay out of the console: its token-auth warning (a Python logger) and the native
    lines its core worker writes straight to file descriptor 2 (`core_worker.cc:...`; Ray also writes them
    to its session's python-core-driver-*.log) go to <tmp>/ray/raddist-driver-<pid>.err; raddist's own
    lines and errors, and Python's, stay on the console (sys.stderr keeps the console's descriptor).
    Wraps a command that starts Ray; a no-op where sys.stderr is not the process's own (pytest's capsys)."""
    log = os.path.join(tempfile.gettempdir(), "ray", f"raddist-driver-{os.getpid()}.err")
    os.makedirs(os.path.dirname(log), exist_ok=True)
    token = logging.getLogger("ray._private.authentication.authentication_token_setup")
    token.addHandler(logging.FileHandler(log))
    token.propagate = False
    try:
        if sys.stderr is not sys.__stderr__:
            yield log
        else:
            with _fd2_to(log):
                yield log
    finally:
        token.propagate = True
        for handler in [h for h in token.handlers if isinstance(h, logging.FileHandler)]:
            handler.close()
            token.removeHandler(handler)
        if os.path.exists(log) and not os.path.getsize(log):
            os.remove(log)


@contextlib.contextmanager
def _fd2_to(log: str):
    """File descriptor 2 (native writers) into log; Python's sys.stderr on the console's descriptor."""
    sys.stderr.flush()
    console = os.dup(2)
    with open(log, "ab") as f:
        os.dup2(f.fileno(), 2)
    sys.stderr = os.fdopen(os.dup(console), "w", buffering=1)
    try:
        yield log
    finally:
        sys.stderr.flush()
        os.dup2(console, 2)
        os.close(console)
        sys.stderr.close()
        sys.stderr = sys.__stderr__


def main(argv: Optional[List[str]] = None) -> int:
    args = _debug_everywhere(build_parser()).parse_args(argv)
    quiet = ray_output_to_logs() if args.fn in (cmd_run, cmd_demo) else contextlib.nullcontext()
    try:
        with quiet:
            return args.fn(args)
    except KeyboardInterrupt:  # before a run installs its own handlers (raddist.interrupt)
        print("interrupted", file=sys.stderr)
        return 130
    except RaddistError as e:
        if args.debug:
            raise
        print(f"raddist: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
