"""What the frozen-protocol grid costs: embed once per backbone x task, or once per protocol cell.

The grid is the demo's (raddist/configs/demo.yaml expanded by raddist.plan; the frozen cells, i.e. those
that read an embedding job: kNN, ML-kNN, linear, logreg, few-shot, segmentation heads, attention
MIL), on the synthetic data `raddist demo` writes. Two ways to run it:

  raddist    run_embedding_jobs over every (backbone, task), as the sweep does (one actor pool per
             backbone and decode kind), on a local Ray cluster into a fresh cache;
             every cell then runs as the sweep runs it (raddist.cells.evaluate_cell: reads the
             cache, runs its protocol, scores it, writes its results);
  reference  as the study's reference code does: for every cell, run the backbone over the task's
             images again (read + decode + forward, in-process, no Ray), then the protocol. Its
             linear probes even re-ran the backbone every epoch (augmentation), so one pass per
             cell is a lower bound on its cost.

Counted: backbone forward passes (images, or slices of volumes, through the backbone) and wall
seconds. wall_ratio = reference / raddist as they run; wall_ratio_same_embedder gives raddist the
reference's in-process embedding loop too (embed once, no Ray), isolating what embedding once saves.
Both sides run the same protocol code on the same features, so each cell's protocol time is
measured once (raddist side) and used for both. The reference's re-embedding is measured on
--reference-cells cells per embedding job and extrapolated linearly to that job's other cells
(the output says so). Excluded from both: ray.init, Ray Tune's trial scheduling.

  python benchmarks/protocol_cost.py
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections import Counter, defaultdict

from common import emit, machine, parse_args, say, start_ray

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SALT = "raddist-benchmark"  # ids are pseudonymised with it, as the sweep does with the deployment's salt


def reembed(job, volumes: bool, batch_size: int) -> float:
    """Seconds to run the backbone over a task's images once, the reference's way: in-process, no cache.

    Decoding is the pipeline's own DecodeBatch (so volumes become slices and masks are read, as in
    the pipeline), one manifest row at a time; the model runs on batches of batch_size images.
    volumes: rows are whole volumes, as the pipeline recorded in the job's cache entry.
    """
    import numpy as np
    import torch

    from common import build_embedder
    from raddist.data import manifest as manifest_lib
    from raddist.data.decode import DecodeBatch

    start = time.perf_counter()
    table = manifest_lib.load(job.task.manifest)
    masks = job.task.type == "segmentation"
    columns = [c for c in ("uri", "mask_uri", "modality") if c in table.column_names and (c != "mask_uri" or masks)]
    decoder = DecodeBatch(job.contract, masks, volumes)
    embedder = build_embedder(job, "cpu")
    rows = {"row": np.arange(table.num_rows), **{c: np.asarray(table[c].to_pylist(), dtype=object) for c in columns}}
    decoded = [decoder({c: v[i : i + 1] for c, v in rows.items()}) for i in range(table.num_rows)]
    errors = [e for d in decoded for e in d["error"] if e]
    assert not errors, f"{len(errors)} rows of {job.task.name} failed to decode, e.g. {errors[0]}"
    images = np.concatenate([d["image"] for d in decoded])
    feats = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            out = embedder(torch.from_numpy(images[i : i + batch_size]))
            feats.append({k: v.to(torch.float16).numpy() for k, v in out.items()})
    return time.perf_counter() - start


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="demo", help="a config file, or a shipped config's name")
    parser.add_argument("--reference-cells", type=int, default=2,
                        help="cells per embedding job whose re-embedding is measured (the rest extrapolated)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in this process (both sides)")
    parser.add_argument("--data", help="synthetic dataset dir (default: written to a temporary dir)")
    args = parse_args(parser, argv, {"config": "smoke", "reference_cells": 1})
    # smoke: the smoke config with one backbone and seed, on tiny data
    overrides = {"backbones": [{"name": "tiny_vit", "weights": "random"}], "seeds": [0], "bootstrap": 10} \
        if args.smoke else {}

    import ray
    import torch

    from raddist import config as config_lib
    from raddist.cells import CellContext, evaluate_cell
    from raddist.data.synthetic import write_synthetic
    from raddist.data.synthetic_seg import write_synthetic_seg
    from raddist.embed.cache import EmbeddingCache
    from raddist.embed.jobs import run_embedding_jobs
    from raddist.plan import make_plan

    torch.set_num_threads(args.threads)
    info = machine()
    say(f"machine: {info}")
    workdir = tempfile.mkdtemp(prefix="raddist-protocost-")
    data = args.data or os.path.join(workdir, "data")
    if not os.path.exists(os.path.join(data, "chest" if args.smoke else "volcls", "manifest.parquet")):
        t0 = time.perf_counter()
        if args.smoke:
            write_synthetic(data, n_patients=20, size=64)
        else:  # the demo's datasets, as `raddist demo` writes them
            write_synthetic(data)
            write_synthetic_seg(data)
        say(f"synthetic datasets written in {time.perf_counter() - t0:.1f}s")
    os.environ["RADDIST_DEMO_DATA"] = data
    cache_dir, output = os.path.join(workdir, "cache"), os.path.join(workdir, "output")
    spec = config_lib.load(args.config, {"storage.cache": cache_dir, **overrides})
    plan = make_plan(spec)
    cells = [c for c in plan.cells if c.embedding_job is not None]  # the frozen-protocol grid
    per_job = defaultdict(list)
    for c in cells:
        per_job[c.embedding_job].append(c)
    say(f"{len(cells)} frozen cells (of {len(plan.cells)}) over {len(per_job)} embedding jobs")

    start_ray(os.cpu_count())
    embed_s, cell_s, keys, images = {}, {}, {}, {}
    cache = EmbeddingCache(cache_dir)
    try:
        t0 = time.perf_counter()  # as the sweep embeds: every job at once, one actor pool per backbone
        outcomes = run_embedding_jobs([plan.jobs[j] for j in per_job], cache, spec.resources, "cpu")
        scale = (time.perf_counter() - t0) / max(sum(o.seconds for o in outcomes), 1e-9)  # manifest loads too
        for job_id, outcome in zip(per_job, outcomes):
            job = plan.jobs[job_id]
            embed_s[job_id], keys[job_id], images[job_id] = outcome.seconds * scale, outcome.key, outcome.images
            assert outcome.computed, "the cache dir is fresh, so every job must compute"
            say(f"  raddist embed {job.backbone.name} x {job.task.name}: {outcome.images} images in "
                f"{embed_s[job_id]:.1f}s (its share of its backbone group's Ray pipeline, actor start included)")
        for job_id, job_cells in per_job.items():
            job = plan.jobs[job_id]
            for c in job_cells:  # as the sweep runs a cell: cache read (once per job), protocol, metrics, write
                t0 = time.perf_counter()
                outcome = evaluate_cell(c, keys[job_id], CellContext(cache.root, output, spec.bootstrap, SALT,
                                                                     spec.resources))
                cell_s[c.id] = time.perf_counter() - t0
                assert outcome["ok"], outcome
            say(f"  protocols {job.backbone.name} x {job.task.name}: {len(job_cells)} cells in "
                f"{sum(cell_s[c.id] for c in job_cells):.1f}s")
    finally:
        ray.shutdown()

    reembed_s, measured = {}, 0
    for job_id, job_cells in per_job.items():
        job = plan.jobs[job_id]
        k = min(args.reference_cells, len(job_cells))
        volumes = bool(cache.meta(keys[job_id]).get("volumes"))
        reembed_s[job_id] = sum(reembed(job, volumes, spec.resources.embed_batch_size or 64) for _ in range(k)) / k
        measured += k
        say(f"  reference re-embed {job.backbone.name} x {job.task.name}: {reembed_s[job_id]:.2f}s per cell "
            f"(mean of {k} measured, x {len(job_cells)} cells)")
    shutil.rmtree(workdir, ignore_errors=True)

    raddist_forwards = sum(images.values())
    reference_forwards = sum(images[c.embedding_job] for c in cells)
    protocols_s = sum(cell_s.values())
    raddist_wall = sum(embed_s.values()) + protocols_s
    reference_embed = sum(reembed_s[c.embedding_job] for c in cells)
    reference_wall = reference_embed + protocols_s
    once_inprocess = sum(reembed_s.values()) + protocols_s  # raddist, had it embedded with the reference's loop
    out = {
        "forward_ratio": round(reference_forwards / raddist_forwards, 2),
        "wall_ratio": round(reference_wall / raddist_wall, 2),
        "wall_ratio_same_embedder": round(reference_wall / once_inprocess, 2),
        "raddist_forwards": raddist_forwards, "reference_forwards": reference_forwards,
        "raddist_wall_s": round(raddist_wall, 1), "reference_wall_s": round(reference_wall, 1),
        "raddist_embed_s": round(sum(embed_s.values()), 1), "reference_embed_s": round(reference_embed, 1),
        "reference_embed_once_s": round(sum(reembed_s.values()), 1), "protocols_s": round(protocols_s, 1),
        "cells": len(cells), "cells_by_protocol": dict(Counter(c.protocol for c in cells)),
        "embedding_jobs": len(per_job), "images_per_job": {
            f"{plan.jobs[j].backbone.name}/{plan.jobs[j].task.name}": n for j, n in images.items()},
        "bootstrap": spec.bootstrap, "torch_threads": args.threads, "reference_reembeds_measured": measured,
        "extrapolated": f"reference re-embedding measured on {measured} of {len(cells)} cells, extrapolated "
                        "linearly per embedding job; protocol times measured for every cell",
        "machine": info, "load_avg_1m_end": round(os.getloadavg()[0], 2),
    }
    emit(out)
    return out


if __name__ == "__main__":
    main()
