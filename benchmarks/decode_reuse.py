"""Decode once: three backbones that share one preprocessing contract, each decoding the images
itself (resources.pixel_cache: false, the way before the pixel cache) against the first one decoding
them and the other two reading its decoded pixels (pixel_cache: true, a fresh cache).

Data: --distinct 8-bit grayscale PNGs of --png-size^2 (a synthetic radiograph each, as
embed_throughput writes them: ~0.65 bytes per pixel, about 8.5 ms to decode and resize one on this
box), and a manifest of --rows rows that cycles over them (sample_id, uri, patient_id, split,
finding). Each row is decoded in full every time (no row shares a decode with another), so the
decode work is that of --rows distinct files; the cycle only keeps the setup short.

Backbones, all at the same contract (64 px, window auto), so one pixel-cache entry serves all three:
  tiny_vit            weights random
  tiny_cnn            weights random
  tiny_vit (file)     weights from a .safetensors file written here (tiny_vit's random weights
                      perturbed), alias tiny_vit_file: another (name, weights), so another features
                      key, but the same contract. A backbone registered only in this process would
                      not exist in the Ray workers, so the third is a registered one.
--backbones 2 keeps the first two (one decodes, the other reads its pixels): the smoke run's.

Both ways run through raddist.embed.jobs.run_embedding_jobs, one after the other, on one local Ray
cluster of --cpus CPUs, each into a fresh cache directory, after one untimed warm-up (one backbone,
--warmup-rows rows: the libraries in the page cache, Ray's worker pool). Timed: the whole
run_embedding_jobs call (manifest loads, keys, leases, the three backbone groups with their actor
starts, meta.json). Also measured: CPU seconds of the whole process tree (this process and the local
Ray cluster: barely moves with machine load, unlike wall time), and that both ways wrote the same
features (bit for bit: the pixels read back are the pixels decoded).

  ratio = wall(today: every backbone decodes) / wall(decode once)

  python benchmarks/decode_reuse.py
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

from common import TreeCpu, cpu_count, emit, load_avg, machine, parse_args, say, start_ray, subset_manifest, write_png_dataset

BACKBONES = ("tiny_vit", "tiny_cnn", "tiny_vit_file")


def tiny_vit_file_weights(path: str) -> str:
    """tiny_vit's random weights, each tensor perturbed, as a .safetensors file: a third (name, weights)."""
    import torch
    from safetensors.torch import save_file

    from raddist.backbones.registry import get_config
    from raddist.backbones.weights import build_model

    model = build_model(get_config("tiny_vit"), "random")
    gen = torch.Generator().manual_seed(1)
    save_file({k: (v + 0.02 * torch.randn(v.shape, generator=gen)).contiguous()
               for k, v in model.state_dict().items()}, path)
    return path


def make_jobs(manifest: str, weights_file: str, pixel_cache: bool, batch_size: int):
    from raddist import spec as spec_lib
    from raddist.plan import make_plan

    spec = spec_lib.parse({
        "backbones": [{"name": "tiny_vit", "weights": "random"}, {"name": "tiny_cnn", "weights": "random"},
                      {"name": "tiny_vit", "weights": weights_file, "alias": "tiny_vit_file"}],
        "tasks": [{"name": "bench", "manifest": manifest, "type": "binary", "labels": ["finding"]}],
        "protocols": [{"name": "knn"}],
        "resources": {"pixel_cache": pixel_cache, "embed_batch_size": batch_size},
    })
    jobs = list(make_plan(spec).jobs.values())
    assert len(jobs) == 3 and len({j.contract["size"] for j in jobs}) == 1, [j.contract for j in jobs]
    return spec, jobs


def run_way(manifest: str, weights_file: str, pixel_cache: bool, batch_size: int, cache_dir: str,
            backbones: int = 3) -> dict:
    from raddist.embed.cache import EmbeddingCache
    from raddist.embed.jobs import run_embedding_jobs

    spec, jobs = make_jobs(manifest, weights_file, pixel_cache, batch_size)
    jobs = jobs[:backbones]
    cache = EmbeddingCache(cache_dir)
    load0 = load_avg()
    with TreeCpu() as cpu:
        start = time.perf_counter()
        outcomes = run_embedding_jobs(jobs, cache, spec.resources, "cpu")
        wall = time.perf_counter() - start
    for o in outcomes:
        assert o.computed and o.errors == 0 and o.error is None, o
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu.seconds, 1), "load_start": load0, "load_end": load_avg(),
            "images": sum(o.images for o in outcomes),
            "jobs": [{"backbone": j.backbone.label, "source": o.source, "seconds": round(o.seconds, 2)}
                     for j, o in zip(jobs, outcomes)],
            "keys": [o.key for o in outcomes]}


def same_features(cache_a: str, cache_b: str, keys) -> bool:
    import numpy as np

    from raddist.embed.cache import EmbeddingCache

    a, b = EmbeddingCache(cache_a), EmbeddingCache(cache_b)
    for key in keys:
        fa, fb = a.load(key), b.load(key)
        if not (np.array_equal(fa.rows, fb.rows) and fa.features.keys() == fb.features.keys()
                and all(np.array_equal(fa.features[n], fb.features[n]) for n in fa.features)):
            return False
    return True


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # 9,000: large enough that the fixed cost of a job (its actors' start) does not decide the ratio (RESULTS.md)
    p.add_argument("--rows", type=int, default=9000, help="manifest rows (images embedded per backbone)")
    p.add_argument("--distinct", type=int, default=300, help="distinct PNG files the rows cycle over")
    p.add_argument("--png-size", type=int, default=1024, help="side of the PNGs")
    p.add_argument("--warmup-rows", type=int, default=64, help="rows of the untimed warm-up run (0: none)")
    p.add_argument("--batch-size", type=int, default=64, help="resources.embed_batch_size")
    p.add_argument("--backbones", type=int, default=3, choices=(2, 3),
                   help="the first N of the three (2: one decodes, one reads its pixels; the smoke run's)")
    p.add_argument("--cpus", type=int, default=cpu_count(), help="CPUs of the local Ray cluster")
    p.add_argument("--workdir", help="where data and caches go (default: a temporary dir, removed after)")
    # smoke: 2 backbones (one decodes, one reads its pixels): each backbone group costs an actor start
    args = parse_args(p, argv, {"rows": 40, "distinct": 4, "png_size": 128, "warmup_rows": 0, "backbones": 2,
                                "cpus": min(2, cpu_count())})

    import ray

    started, info = time.perf_counter(), machine()
    say(f"machine: {info}")
    workdir = args.workdir or tempfile.mkdtemp(prefix="raddist-decode-reuse-")
    t0 = time.perf_counter()
    manifest = write_png_dataset(os.path.join(workdir, "data"), args.rows, args.distinct, args.png_size)
    weights = tiny_vit_file_weights(os.path.join(workdir, "tiny_vit_file.safetensors"))
    say(f"wrote {min(args.distinct, args.rows)} PNGs of {args.png_size}^2 ({args.rows} manifest rows) in "
        f"{time.perf_counter() - t0:.1f}s under {workdir}")
    start_ray(args.cpus)
    try:
        if args.warmup_rows:
            small = subset_manifest(manifest, min(args.warmup_rows, args.rows))
            w = run_way(small, weights, True, args.batch_size, tempfile.mkdtemp(prefix="warm-", dir=workdir),
                        backbones=1)
            say(f"warm-up (untimed): one backbone, {args.warmup_rows} rows, {w['wall_s']}s")
        caches = {way: os.path.join(workdir, f"cache-{way}") for way in ("today", "decode_once")}
        runs = {}
        for way, pixel_cache in (("today", False), ("decode_once", True)):
            say(f"{way} (pixel_cache: {str(pixel_cache).lower()}): {args.backbones} backbones x {args.rows} images")
            runs[way] = run_way(manifest, weights, pixel_cache, args.batch_size, caches[way], args.backbones)
            r = runs[way]
            say(f"  {r['wall_s']}s wall, {r['cpu_s']} CPU-s, load {r['load_start']} -> {r['load_end']}; per job: "
                + ", ".join(f"{j['backbone']} {j['seconds']}s ({j['source']})" for j in r["jobs"]))
        assert runs["today"]["keys"] == runs["decode_once"]["keys"]
        equal = same_features(caches["today"], caches["decode_once"], runs["today"]["keys"])
        say(f"features equal across the two ways: {equal}")
    finally:
        ray.shutdown()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    today, once = runs["today"], runs["decode_once"]
    for r in runs.values():
        r.pop("keys")
    out = {
        "ratio": round(today["wall_s"] / once["wall_s"], 3),
        "cpu_ratio": round(today["cpu_s"] / once["cpu_s"], 3),
        "today_s": today["wall_s"], "decode_once_s": once["wall_s"],
        "features_equal": equal, "runs": runs,
        "rows": args.rows, "distinct_files": min(args.distinct, args.rows), "png_size": args.png_size,
        "backbones": list(BACKBONES[:args.backbones]), "contract_size": 64, "batch_size": args.batch_size,
        "ray_cpus": args.cpus,
        "machine": info, "load_avg_1m_end": load_avg(), "seconds": round(time.perf_counter() - started, 1),
        "timing": f"wall of one run_embedding_jobs call over the {args.backbones} backbones, fresh cache, "
                  "after an untimed warm-up",
    }
    emit(out)
    return out


if __name__ == "__main__":
    main()
