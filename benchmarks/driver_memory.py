"""The driver's memory during a large embedding job: the workers write the features (raddist's
pipeline) against the driver receiving every embedded batch and writing it itself (the way before).

Job: --rows images (64x64 grayscale PNGs, every one a file of its own, written once), tiny_cnn with
random weights at image_size --image-size (96), features {n_last_blocks: 4, patch_mean: true,
patch_tokens: 4}: the pooled blocks (368 values) and the patch-token grids of its 4 blocks (24^2 x
32, 12^2 x 48, 6^2 x 192, 3^2 x 96 at 96 px), 33,488 float16 values = 65 KB per image, 1.3 GB for
20,000 images. Why this size: the pooled features alone are 736 bytes per image (15 MB per 20,000),
too little for any way of moving them to show in a driver's memory. What the driver of the old way
holds is a number of in-flight blocks, so it scales with the bytes per image, and at study scale
those are large: a segmentation job caches patch tokens (seg_linear 1 block, seg_unet 5), and one
block of ViT-B/14 at 224 is 393 KB per image (ViT-S/14: 196 KB). 65 KB per image is a stand-in well
below that; at 64 px (--image-size 64: 30 KB per image) the old way's growth roughly halves.

The two ways, the same job into a fresh cache, each in a fresh driver process (its own local Ray
cluster of --cpus CPUs), so neither inherits the other's heap or object-store mappings:
  workers_write  raddist.embed.jobs.run_embedding_jobs as it is: decode -> EmbedAndWrite actors that
                 write each block's part to the cache; the driver gets a few numbers per block;
  today          the same run_embedding_jobs, with embed_group replaced by a copy that builds the same
                 Ray Dataset from public parts (pipeline.layout and rows_per_block, DecodeBatch) but ends
                 with the plain EmbedBatch actor (raddist.embed.actor), iterates the full feature batches in
                 the driver and writes each one there with raddist.embed.cache.write_part. Everything
                 else (manifest, keys, leases, meta.json) is the same code.
In each driver: one untimed warm-up job of --warmup-rows rows the same way (imports, Ray Data's
first execution), then gc, then the job, with the driver's RSS (psutil) sampled by a thread every
50 ms. growth = peak RSS during the job - RSS just before it. RssAnon / RssShmem at the peak (Linux)
tell the driver's own heap from Ray's object-store pages it has mapped.

  growth_mb = the workers-write driver's growth;   ratio = today's growth / growth_mb

  python benchmarks/driver_memory.py
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from common import PeakRss, cpu_count, emit, load_avg, machine, parse_args, say, start_ray, subset_manifest, write_png_dataset

FEATURES = {"n_last_blocks": 4, "patch_mean": True, "patch_tokens": 4}
WAYS = ("today", "workers_write")


def make_job(manifest: str, batch_size: int, image_size: int):
    from raddist import spec as spec_lib
    from raddist.plan import make_plan

    spec = spec_lib.parse({
        "backbones": [{"name": "tiny_cnn", "weights": "random"}],
        "tasks": [{"name": "bench", "manifest": manifest, "type": "binary", "labels": ["finding"]}],
        "protocols": [{"name": "knn"}],
        "image_size": image_size,
        # pixel cache off: both ways decode and neither writes pixels, only the features' path differs
        "resources": {"pixel_cache": False, "embed_batch_size": batch_size},
    })
    job = next(iter(make_plan(spec).jobs.values()))
    return spec, dataclasses.replace(job, features=dict(FEATURES))


def embed_group_driver_writes(jobs, model, kind, resources, device, on_block):
    """raddist.embed.pipeline.embed_group as it was before the workers wrote, from the product's public
    parts: the rows in blocks of pipeline.rows_per_block, decoded by DecodeBatch at the pipeline's
    layout, the plain EmbedBatch actor, and every embedded batch written by the driver."""
    import math

    import numpy as np
    import ray

    from raddist.data.decode import DecodeBatch
    from raddist.embed import pipeline
    from raddist.embed.actor import EmbedBatch
    from raddist.embed.cache import block_table, write_part

    rows = [{"job": j, "row": r["row"], "uri": r["uri"], "mask_uri": r.get("mask_uri") or "",
             "modality": r.get("modality") or ""} for j, job in enumerate(jobs) for r in job.rows.to_pylist()]
    res = pipeline.layout(resources, device, len(rows) or None)
    per_block = pipeline.rows_per_block(len(rows), ray.cluster_resources().get("CPU", 1))
    ds = ray.data.from_items(rows, override_num_blocks=math.ceil(len(rows) / per_block))
    contracts = [j.contract for j in jobs]  # what the decode tasks carry (not the jobs' row tables)

    def decode(batch: dict) -> dict:  # pixel cache off (make_job): no pixel parts to read or write
        outs = []
        for j in np.unique(batch["job"]):
            mine = batch["job"] == j
            decoder = DecodeBatch(contracts[j], kind["masks"], kind["volumes"], kind["device_jpeg"])
            out = decoder({k: batch[k][mine] for k in ("row", "uri", "mask_uri", "modality")})
            outs.append({**out, "job": np.full(len(out["row"]), j, np.int32)})
        return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

    ds = ds.map_batches(decode, batch_format="numpy", batch_size=None, num_cpus=res["decode_cpus"])
    ds = ds.map_batches(
        EmbedBatch,
        fn_constructor_kwargs={**model, "threads": res["threads"], "batch": resources.embed_batch_size,
                               "compile": resources.compile, "gpu": res["num_gpus"] > 0},
        compute=ray.data.ActorPoolStrategy(min_size=res["min"], max_size=res["max"], initial_size=res["initial"]),
        num_gpus=res["num_gpus"], num_cpus=res["num_cpus"], batch_size=None, batch_format="numpy")
    where = {"node": ray.get_runtime_context().get_node_id(), "gpus": []}
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for j in np.unique(batch["job"]):
            mine = batch["job"] == j
            columns = {k: v[mine] for k, v in batch.items() if k != "job"}
            on_block(int(j), write_part(jobs[j].entry, block_table(columns)), [], where)


def feature_bytes(size: int) -> int:
    """float16 bytes per image of FEATURES from tiny_cnn at `size`."""
    import torch

    from raddist.backbones.embedder import Embedder
    from raddist.backbones.registry import get_config
    from raddist.backbones.weights import build_model

    config = get_config("tiny_cnn")
    embedder = Embedder(config, build_model(config, "random"), FEATURES["n_last_blocks"], FEATURES["patch_mean"],
                        FEATURES["patch_tokens"])
    out = embedder(torch.zeros((1, size, size), dtype=torch.uint8))
    return 2 * sum(v[0].numel() for v in out.values())


def child(args) -> dict:
    """One way in this (fresh) driver process: warm-up, then the measured job. --child both (the smoke
    run's): each way in turn in this one driver, {way: its result}."""
    from raddist.embed import jobs as jobs_mod

    start_ray(args.cpus)
    if args.child != "both":
        return child_way(args, args.child, jobs_mod)
    workers_write = jobs_mod.embed_group
    runs = {}
    for way in WAYS:
        runs[way] = child_way(args, way, jobs_mod)
        jobs_mod.embed_group = workers_write
    return runs


def child_way(args, way: str, jobs_mod) -> dict:
    from raddist.embed.cache import EmbeddingCache

    if way == "today":
        jobs_mod.embed_group = embed_group_driver_writes

    def run(manifest):
        spec, job = make_job(manifest, args.batch_size, args.image_size)
        cache = EmbeddingCache(tempfile.mkdtemp(prefix=f"cache-{way}-", dir=args.workdir))
        start = time.perf_counter()
        outcome = jobs_mod.run_embedding_jobs([job], cache, spec.resources, "cpu")[0]
        assert outcome.computed and outcome.errors == 0 and outcome.error is None, outcome
        meta = cache.meta(outcome.key)
        return {"wall_s": round(time.perf_counter() - start, 2), "images": outcome.images,
                "parts": len(meta["parts"]), "part_mb": round(sum(p["bytes"] for p in meta["parts"]) / 2**20, 1)}

    if args.warmup_rows:
        run(subset_manifest(args.manifest, args.warmup_rows))
    load0 = load_avg()
    with PeakRss() as rss:
        job = run(args.manifest)
    return {"way": way, "embed_group": jobs_mod.embed_group.__name__, **job, **rss.summary(), "load_start": load0,
            "load_end": load_avg()}


def run_child(way: str, args, manifest: str, workdir: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", way, "--manifest", manifest, "--workdir", workdir,
           "--cpus", str(args.cpus), "--batch-size", str(args.batch_size), "--warmup-rows", str(args.warmup_rows),
           "--image-size", str(args.image_size)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=os.path.dirname(os.path.abspath(__file__)))
    lines = proc.stdout.strip().splitlines()
    if proc.returncode or not lines:
        raise RuntimeError(f"{way} driver failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=20000, help="images in the job (each a PNG file of its own)")
    p.add_argument("--png-size", type=int, default=64, help="side of the PNGs")
    p.add_argument("--image-size", type=int, default=96, help="the contract's size (spec image_size)")
    p.add_argument("--warmup-rows", type=int, default=256, help="rows of each driver's untimed warm-up job")
    p.add_argument("--batch-size", type=int, default=64, help="resources.embed_batch_size")
    p.add_argument("--cpus", type=int, default=cpu_count(), help="CPUs of each driver's local Ray cluster")
    p.add_argument("--workdir", help="where data and caches go (default: a temporary dir, removed after)")
    p.add_argument("--child", choices=(*WAYS, "both"), help=argparse.SUPPRESS)
    p.add_argument("--manifest", help=argparse.SUPPRESS)
    args = parse_args(p, argv, {"rows": 120, "warmup_rows": 0, "image_size": 64, "cpus": min(2, cpu_count())})
    if args.child:
        out = child(args)
        emit(out)
        return out

    started, info = time.perf_counter(), machine()
    say(f"machine: {info}")
    workdir = args.workdir or tempfile.mkdtemp(prefix="raddist-driver-memory-")
    try:
        t0 = time.perf_counter()
        manifest = write_png_dataset(os.path.join(workdir, "data"), args.rows, args.rows, args.png_size)
        say(f"wrote {args.rows} PNGs of {args.png_size}^2 in {time.perf_counter() - t0:.1f}s under {workdir}")
        # smoke: both ways in one driver (one Ray start, not two): it checks that they run and write the same
        if args.smoke:
            say(f"both ways in one driver (smoke), {args.rows} images of tiny_cnn at {args.image_size} px")
        runs = run_child("both", args, manifest, workdir) if args.smoke else {}
        for way in WAYS:
            if way not in runs:
                say(f"{way}: a fresh driver, {args.rows} images of tiny_cnn at {args.image_size} px, features {FEATURES}")
                runs[way] = run_child(way, args, manifest, workdir)
            r = runs[way]
            say(f"  RSS {r['base_mb']} -> peak {r['peak_mb']} MB (growth {r['growth_mb']} MB; at the peak "
                f"{r['peak_parts_mb']}), {r['wall_s']}s, {r['parts']} parts, {r['part_mb']} MB of features, "
                f"load {r['load_start']} -> {r['load_end']}")
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    new, old = runs["workers_write"], runs["today"]
    out = {
        "growth_mb": new["growth_mb"], "today_growth_mb": old["growth_mb"],
        "ratio": round(old["growth_mb"] / max(new["growth_mb"], 1.0), 2),
        "runs": runs, "rows": args.rows, "png_size": args.png_size, "backbone": "tiny_cnn", "features": FEATURES,
        "image_size": args.image_size, "feature_bytes_per_image": feature_bytes(args.image_size),
        "batch_size": args.batch_size, "ray_cpus": args.cpus, "machine": info, "load_avg_1m_end": load_avg(),
        "seconds": round(time.perf_counter() - started, 1),
        "measure": "peak RSS of the driver process during the job (psutil, every 50 ms) minus its RSS just before; "
                   "ratio's denominator floored at 1 MB",
    }
    emit(out)
    return out


if __name__ == "__main__":
    main()
