"""Do the demo's trained heads converge? The demo's head-training cells as shipped, then again with
the cap, the patience and the training budget raised --factor times: a result that moves by more
than its own CI was still training, or stopped on noise.

Cells: every demo protocol whose head trains on cached features, with the demo's own params
(raddist/configs/demo.yaml): linear, fewshot (its linear probe), attention_mil, seg_linear,
seg_unet. With --small, also the segmentation heads on a task of eight small structures
(synthetic_seg.write_small_structures: as many and as small as real anatomy). Run "shipped" as
configured; run "raised": the same cells with `epochs` (the cap of a plateau-stopped head, the
budget of a fixed one: one field) and `patience` x --factor (the protocols' defaults where the demo
sets none; fewshot: its linear probe's). Raising the cap alone cannot see a head that stopped on
noise (it never reaches the cap); raising the patience can. --set key=value changes the heads'
stopping parameters in BOTH runs (e.g. lr_drops=0, the rule before issue 23) to compare rules.

Both runs through raddist.sweep.run_sweep on one local Ray cluster, one shared embedding cache (the
second run computes no embedding), fresh outputs. Compared per (task, backbone, protocol, params
less the caps, seed, metric): |raised - shipped| against the shipped CI's half-width.

  exceed = results whose change is larger than their CI half-width (target: 0)
  max_change_over_ci = the largest |change| / half-width
  stopped = how the chosen heads stopped in each run (plateau | cap), from each cell.json

  python benchmarks/convergence.py [--small] [--protocols seg_linear ...] [--set lr_drops=0 ...]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from typing import Optional

from common import cpu_count, emit, load_avg, machine, parse_args, say, start_ray

HEADS = ("linear", "fewshot", "attention_mil", "seg_linear", "seg_unet")


RAISED = ("epochs", "patience")  # the cap (= the budget of a fixed head) and the patience


def raised(protocol: dict, factor: int, settings: Optional[dict] = None) -> dict:
    """The protocol entry with its stopping settings (fewshot: its linear probe's) updated by
    `settings`, then its cap and patience raised factor times."""
    from raddist import protocols

    def scaled(params: dict, defaults: dict) -> dict:
        params = {**params, **(settings or {})}
        return {**params, **{k: factor * params.get(k, defaults[k]) for k in RAISED if k in defaults}}

    params = dict(protocol.get("params", {}))
    defaults = protocols.get(protocol["name"]).params().model_dump()
    if "linear" in defaults:  # fewshot's linear probe
        params["linear"] = scaled(params.get("linear", {}), defaults["linear"])
    else:
        params = scaled(params, defaults)
    return {**protocol, "params": params}


def small_task(data: str) -> dict:
    """The task of many small structures, written under data once."""
    from raddist.data.synthetic_seg import SMALL_CLASSES, write_small_structures

    manifest = os.path.join(data, "small", "manifest.parquet")
    if not os.path.exists(manifest):
        write_small_structures(os.path.join(data, "small"))
    return {"name": "small_structures_2d", "manifest": manifest, "type": "segmentation",
            "classes": list(SMALL_CLASSES)}


def run(config: dict, output: str, cache: str) -> dict:
    from raddist.spec import parse
    from raddist.sweep import run_sweep

    spec = parse({**config, "storage": {"output": output, "cache": cache}})
    t = time.perf_counter()
    summary = run_sweep(spec, say=lambda line: None)
    if summary["cells_failed"]:
        raise RuntimeError(f"{summary['cells_failed']} cells failed: see {output}")
    return {"wall_s": round(time.perf_counter() - t, 1), "cells": summary["cells_done"]}


def stopped(output: str) -> dict:
    counts = Counter()
    for path in glob.glob(os.path.join(output, "cells", "*", "cell.json")):
        with open(path) as f:
            info = json.load(f)
        counts[f"{info['protocol']}:{(info.get('selected') or {}).get('stopped', '?')}"] += 1
    return dict(sorted(counts.items()))


def dice(shipped: str, raised_out: str) -> dict:
    """Mean Dice per (task, protocol), shipped -> raised: what the longer training gains on average."""
    import pandas as pd

    out = {}
    for name, output in (("shipped", shipped), ("raised", raised_out)):
        t = pd.read_parquet(os.path.join(output, "results.parquet"))
        t = t[t["metric"] == "dice"]
        for (task, protocol), v in t.groupby(["task", "protocol"])["value"]:
            out.setdefault(f"{task}:{protocol}", {})[name] = round(float(v.mean()), 4)
    return out


def compare(shipped: str, raised_out: str) -> dict:
    import numpy as np
    import pandas as pd

    def table(output):
        t = pd.read_parquet(os.path.join(output, "results.parquet"))
        t["params"] = t["params"].map(lambda p: json.dumps({k: v for k, v in json.loads(p).items()
                                                            if k not in RAISED + ("linear",)},
                                                           sort_keys=True))
        return t.set_index(["task", "backbone", "protocol", "params", "seed", "metric"])

    a, b = table(shipped), table(raised_out)
    joined = a[["value", "ci_low", "ci_high"]].join(b[["value"]].rename(columns={"value": "value_raised"}), how="inner")
    joined = joined[np.isfinite(joined["value"]) & np.isfinite(joined["value_raised"])]
    half = (joined["ci_high"] - joined["ci_low"]) / 2
    change = (joined["value_raised"] - joined["value"]).abs()
    ratio = (change / half.where(half > 0)).fillna(0.0)
    over = joined[change > half]
    worst = ratio.idxmax() if len(ratio) else None
    return {
        "results_compared": int(len(joined)), "results_only_in_one": int(len(a) + len(b) - 2 * len(joined)),
        "exceed": int(len(over)), "unchanged": int((change == 0).sum()),
        "max_change": round(float(change.max()), 6) if len(change) else None,
        "max_change_over_ci": round(float(ratio.max()), 3) if len(ratio) else None,
        "worst": None if worst is None else {"key": [str(k) for k in worst],
                                             **{k: round(float(v), 6) for k, v in joined.loc[worst].items()}},
        "exceeding": [[str(k) for k in key] for key in over.index[:20]],
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--factor", type=int, default=4, help="how many times the caps are raised")
    p.add_argument("--protocols", nargs="+", default=list(HEADS), help="which of the demo's heads")
    p.add_argument("--workdir", help="data, cache and outputs (default: a temporary dir, removed after)")
    p.add_argument("--small", action="store_true", help="add the task of eight small structures (seg heads)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="stopping parameters of every head in both runs, e.g. lr_drops=0")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the demo's)")
    p.add_argument("--backbones", nargs="+", help="which of the demo's backbones (default: all)")
    p.add_argument("--tasks", nargs="+", help="which of the tasks (default: all)")
    args = parse_args(p, argv, {"protocols": ["linear"], "tasks": ["brain_mri"], "backbones": ["tiny_vit"],
                                "seeds": [0], "small": False})
    settings = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in args.set)}

    from raddist.data.synthetic import write_brain_mri, write_synthetic
    from raddist.data.synthetic_seg import write_synthetic_seg
    from raddist.config import load

    started, info = time.perf_counter(), machine()
    say(f"machine: {info}")
    workdir = args.workdir or tempfile.mkdtemp(prefix="raddist-convergence-")
    data = os.path.join(workdir, "data")
    if args.smoke:  # the one task the smoke run keeps, its images at 64 px
        if not os.path.exists(os.path.join(data, "brain_mri", "manifest.parquet")):
            write_brain_mri(os.path.join(data, "brain_mri"), size=64)
    elif not os.path.exists(os.path.join(data, "volcls", "manifest.parquet")):
        write_synthetic(data)
        write_synthetic_seg(data)
    os.environ["RADDIST_DEMO_DATA"] = data
    demo = load("demo").model_dump(exclude_none=True)  # ${RADDIST_DEMO_DATA} expanded
    demo.pop("robustness", None)  # further test sets score the same heads: nothing to converge there
    for task in demo["tasks"]:
        task.pop("external", None)
    if args.small:
        demo["tasks"].append(small_task(data))
    if args.seeds:
        demo["seeds"] = args.seeds
    if args.backbones:
        demo["backbones"] = [b for b in demo["backbones"] if b["name"] in args.backbones]
    if args.tasks:
        demo["tasks"] = [t for t in demo["tasks"] if t["name"] in args.tasks]
    names = {t["name"] for t in demo["tasks"]}
    heads = [{**pr, **({"tasks": [t for t in pr["tasks"] if t in names]} if pr.get("tasks") else {})}
             for pr in demo["protocols"] if pr["name"] in args.protocols]
    heads = [pr for pr in heads if pr.get("tasks") != []]
    cache = os.path.join(workdir, "cache")
    load0 = load_avg()
    if args.smoke:  # a local cluster without the dashboard; otherwise run_sweep starts (or joins) one
        start_ray(min(2, cpu_count()))
    try:
        shipped_out, raised_out = os.path.join(workdir, "shipped"), os.path.join(workdir, "raised")
        runs = {"shipped": run({**demo, "protocols": [raised(pr, 1, settings) for pr in heads]}, shipped_out, cache)}
        say(f"shipped caps: {runs['shipped']}")
        runs["raised"] = run({**demo, "protocols": [raised(pr, args.factor, settings) for pr in heads]}, raised_out,
                             cache)
        say(f"cap and patience x{args.factor}: {runs['raised']}")
        out = {**compare(shipped_out, raised_out),
               "stopped": {"shipped": stopped(shipped_out), "raised": stopped(raised_out)},
               "dice": dice(shipped_out, raised_out), "runs": runs, "factor": args.factor,
               "protocols": args.protocols, "small": args.small, "settings": settings}
    finally:
        import ray

        ray.shutdown()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    out.update(machine=info, load=[load0, load_avg()], seconds=round(time.perf_counter() - started, 1))
    emit(out)
    return out


if __name__ == "__main__":
    main()
