"""The sweep's cost per cell as the number of cells grows: near-free cells through the real Ray Tune
path (raddist.trials.run_cells), at --counts cells (200, 800 and 3,192, the reference study's count).

A cell here is real but costs almost nothing: a kNN cell (ks [5], bootstrap 0) on a tiny cache entry
(--rows manifest rows of --dim features, written with raddist.embed.cache.write_part and finished
with EmbeddingCache.finish, as the embedding workers and driver do), so what is measured is the
sweep's own machinery: Tune's trials (resources.cells_per_trial cells each, default 8, so 3,192
cells are 399 trials), the ReadyCells searcher, the CellProgress callback and progress.json, the
cells reading the cache (once per trial worker: reuse_actors) and writing their outputs, and the
final listing of done cells. The cells differ only in their seed (one embedding job, marked done
in JobStates before the run, so every cell is ready at once). Resources: the spec's defaults
(max_concurrent_cells, cpus_per_cell, cells_per_trial) unless given.

One local Ray cluster of --cpus CPUs for all counts, one untimed warm-up run of --warmup cells (Ray
Tune's imports, trial workers), then each count once into a fresh output directory (local disk), in
the order given. Timed: the run_cells call.

  per_cell_s[count] = wall / count;   overhead_ratio = per_cell_s[largest] / per_cell_s[smallest]
  marginal_per_cell_s["a-b"] = (wall[b] - wall[a]) / (b - a): each further cell, the fixed cost of a
  run_cells call cancelled;  marginal_ratio = the last of those / the first (> 1: superlinear)

--what-if: undo the two fixes raddist.trials now carries, to measure what they give: the trial
resources function closes over every pending Cell again (Tune unpickles all of them each time it
creates a trial's placement group: O(cells) per trial), and Tune's CSV, JSON and TensorBoard loggers
write their files per trial result again (TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=0). Valid here because
every cell is a frozen kNN cell.

--profile COUNT: run that count under cProfile (the driver: Tune's controller loop runs here) and
print the top functions by cumulative time.

  python benchmarks/sweep_overhead.py
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import tempfile
import time

from common import cpu_count, emit, load_avg, machine, parse_args, say, start_ray

SALT = "raddist-benchmark"
KEY = "sweepoverheadbench0001"


def write_task(workdir: str, rows: int, dim: int):
    """A manifest of `rows` rows (60 % train, 20 % val, 20 % test, a patient each) and a complete
    cache entry of its features. Returns (manifest path, cache root)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raddist.embed.cache import EmbeddingCache, block_table, write_part

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, rows)
    split = np.array(["train"] * rows, dtype=object)
    split[int(0.6 * rows): int(0.8 * rows)], split[int(0.8 * rows):] = "val", "test"
    labels[[0, 1, int(0.6 * rows), int(0.6 * rows) + 1, int(0.8 * rows), int(0.8 * rows) + 1]] = [0, 1] * 3
    manifest = os.path.join(workdir, "manifest.parquet")
    pq.write_table(pa.table({"sample_id": [f"s{i}" for i in range(rows)],
                             "uri": [f"images/s{i}.png" for i in range(rows)],  # never read: frozen cells
                             "patient_id": [f"p{i}" for i in range(rows)], "split": list(split),
                             "finding": labels}), manifest)
    cache = EmbeddingCache(os.path.join(workdir, "cache"))
    feats = rng.normal(size=(rows, dim)) + labels[:, None] * 0.5
    part = write_part(cache.entry(KEY), block_table({
        "row": np.arange(rows, dtype=np.int64), "slice": np.full(rows, -1, np.int64),
        "error": np.array([""] * rows, dtype=object), "cls": feats.astype(np.float32)}))
    cache.finish(KEY, [part], {"job_id": "bench", "backbone": "tiny_vit", "features": {"n_last_blocks": 1,
                                                                                        "patch_mean": False},
                               "feature_names": ["cls"], "block_dims": [dim], "dense_names": [],
                               "manifest_rows": rows, "masks": False, "volumes": False, "device": "cpu"})
    return manifest, cache.root


def make_spec(manifest: str, cells: int, resources: dict):
    from raddist import spec as spec_lib
    from raddist.plan import make_plan

    spec = spec_lib.parse({
        "name": "sweep-overhead",
        "backbones": [{"name": "tiny_vit", "weights": "random"}],
        "tasks": [{"name": "bench", "manifest": manifest, "type": "binary", "labels": ["finding"]}],
        "protocols": [{"name": "knn", "params": {"ks": [5]}}],
        "seeds": list(range(cells)),
        "bootstrap": 0,
        "resources": resources,
    })
    plan = make_plan(spec)
    assert len(plan.cells) == cells and len(plan.jobs) == 1
    return spec, plan


def run_count(manifest: str, cache_root: str, cells: int, resources: dict, workdir: str, profile: bool = False,
              undo_fixes: bool = False):
    from raddist.cells.run import CellContext
    from raddist.progress import RunProgress
    from raddist.trials import JobStates, batches, run_cells

    spec, plan = make_spec(manifest, cells, resources)
    output = tempfile.mkdtemp(prefix=f"out-{cells}-", dir=workdir)
    jobs = JobStates(train_during_embedding=False)
    jobs.done(next(iter(plan.jobs)), KEY)
    jobs.finished = True
    ctx = CellContext(cache_root, output, spec.bootstrap, SALT, spec.resources)
    progress = RunProgress(output, len(plan.cells), 1)
    trials = len(batches(plan.cells, spec.resources.cells_per_trial))
    load0 = load_avg()
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    start, start_unix = time.perf_counter(), time.time()
    with what_if(spec.resources, plan.cells) if undo_fixes else contextlib.nullcontext():
        outcomes = run_cells(spec, plan.cells, jobs, ctx, progress, None)
    wall = time.perf_counter() - start
    if profiler:
        profiler.disable()
    progress.finish()
    failed = [o for o in outcomes if not o["ok"]]
    if failed:
        raise RuntimeError(f"{len(failed)} of {cells} cells failed, e.g. {failed[0]}: see {output}")
    timing = cell_timing(output, start_unix, time.time())
    tune_dir = os.path.join(output, "tune")
    state_mb = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(tune_dir) for f in fs
                   if f.startswith(("experiment_state", "searcher-state", "tuner"))) / 2**20
    return {"cells": cells, "trials": trials, "wall_s": round(wall, 2), "per_cell_s": round(wall / cells, 4),
            "per_trial_s": round(wall / trials, 3), "tune_state_mb": round(state_mb, 2), **timing,
            "load_start": load0, "load_end": load_avg()}, profiler


def cell_timing(output: str, start: float, end: float) -> dict:
    """From the cells' own cell.json: the seconds they spent in evaluate_cell (summed), and when the
    first started and the last finished, relative to the run_cells call."""
    import glob
    import json

    infos = []
    for path in glob.glob(os.path.join(output, "cells", "*", "cell.json")):
        with open(path) as f:
            infos.append(json.load(f))
    if not infos:
        return {}
    return {"cells_busy_s": round(sum(i["wall_seconds"] for i in infos), 2),
            "first_cell_start_s": round(min(i["started_at"] for i in infos) - start, 2),
            "last_cell_end_to_return_s": round(end - max(i["finished_at"] for i in infos), 2)}


@contextlib.contextmanager
def what_if(res, cells):
    """See --what-if in the module docstring: the resources function pickled with every cell, and
    Tune's per-trial loggers on, for one run_cells call."""
    from ray import tune

    original, env = tune.with_resources, os.environ.get("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS")
    by_id = {c.id: c for c in cells}
    bundle = {"CPU": res.cpus_per_cell, "GPU": res.gpus_per_cell}
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "0"
    tune.with_resources = lambda trainable, resources: original(
        trainable, lambda config: (by_id, tune.PlacementGroupFactory([dict(bundle)]))[1])
    try:
        yield
    finally:
        tune.with_resources = original
        if env is None:
            os.environ.pop("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", None)
        else:
            os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = env


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--counts", type=int, nargs="+", default=[200, 800, 3192], help="cells per run")
    p.add_argument("--warmup", type=int, default=16, help="cells of the untimed warm-up run (0: none)")
    p.add_argument("--rows", type=int, default=60, help="manifest rows of the tiny task")
    p.add_argument("--dim", type=int, default=32, help="feature width of the tiny cache entry")
    p.add_argument("--cells-per-trial", type=int, help="resources.cells_per_trial (default: the spec's)")
    p.add_argument("--max-concurrent-cells", type=int, help="resources.max_concurrent_cells (default: the spec's)")
    p.add_argument("--cpus", type=int, default=cpu_count(), help="CPUs of the local Ray cluster")
    p.add_argument("--what-if", action="store_true", help="the recommended fixes, patched in (see above)")
    p.add_argument("--profile", type=int, help="run this count under cProfile (driver) and print the top functions")
    p.add_argument("--workdir", help="where data and outputs go (default: a temporary dir, removed after)")
    # smoke: 4 and 8 cells, 4 per trial: 1 and 2 trials, each a Tune trial's start
    args = parse_args(p, argv, {"counts": [4, 8], "warmup": 0, "cells_per_trial": 4, "cpus": min(2, cpu_count())})

    import ray

    from raddist.spec import ResourcesSpec

    resources = {k: v for k, v in (("cells_per_trial", args.cells_per_trial),
                                   ("max_concurrent_cells", args.max_concurrent_cells)) if v}
    res = ResourcesSpec(**resources)
    started, info = time.perf_counter(), machine()
    say(f"machine: {info}")
    workdir = args.workdir or tempfile.mkdtemp(prefix="raddist-sweep-overhead-")
    manifest, cache_root = write_task(workdir, args.rows, args.dim)
    start_ray(args.cpus)
    runs, profile_text = {}, None
    try:
        if args.warmup:
            w, _ = run_count(manifest, cache_root, args.warmup, resources, workdir)
            say(f"warm-up (untimed): {w['cells']} cells in {w['wall_s']}s")
        for count in args.counts:
            r, profiler = run_count(manifest, cache_root, count, resources, workdir, profile=count == args.profile,
                                    undo_fixes=args.what_if)
            runs[count] = r
            say(f"{count} cells ({r['trials']} trials): {r['wall_s']}s, {1e3 * r['per_cell_s']:.1f} ms per cell, "
                f"{1e3 * r['per_trial_s']:.0f} ms per trial; cells busy {r.get('cells_busy_s')}s in all, first "
                f"started after {r.get('first_cell_start_s')}s, last ended {r.get('last_cell_end_to_return_s')}s "
                f"before the return; Tune state {r['tune_state_mb']} MB, "
                f"load {r['load_start']} -> {r['load_end']}")
            if profiler:
                import io
                import pstats

                buf = io.StringIO()
                pstats.Stats(profiler, stream=buf).sort_stats("cumulative").print_stats(40)
                profile_text = buf.getvalue()
                say(f"cProfile of the {count}-cell run (driver), by cumulative time:\n{profile_text}")
    finally:
        ray.shutdown()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    counts = sorted(runs)
    # what each further cell costs between two counts (the fixed cost of a run_cells call cancels): it
    # would grow with the count if anything in the sweep were superlinear in cells or trials
    marginal = {f"{a}-{b}": round((runs[b]["wall_s"] - runs[a]["wall_s"]) / (b - a), 4)
                for a, b in zip(counts, counts[1:])}
    out = {
        "per_cell_s": {str(c): runs[c]["per_cell_s"] for c in counts},
        "overhead_ratio": round(runs[counts[-1]]["per_cell_s"] / runs[counts[0]]["per_cell_s"], 3),
        "marginal_per_cell_s": marginal,
        "marginal_ratio": round(list(marginal.values())[-1] / list(marginal.values())[0], 3) if len(marginal) > 1
        else None,
        "runs": {str(c): runs[c] for c in counts},
        "cells_per_trial": res.cells_per_trial, "max_concurrent_cells": res.max_concurrent_cells,
        "cpus_per_cell": res.cpus_per_cell, "what_if": args.what_if, "rows": args.rows, "dim": args.dim, "ray_cpus": args.cpus,
        "machine": info, "load_avg_1m_end": load_avg(), "seconds": round(time.perf_counter() - started, 1),
        "timing": "wall of one raddist.trials.run_cells call per count, fresh output, after an untimed warm-up",
    }
    emit(out)
    return out


if __name__ == "__main__":
    main()
