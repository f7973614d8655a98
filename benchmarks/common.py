"""Shared pieces of the benchmarks: the machine's description, CPU accounting of a process tree, the
naive path's Dataset and model, synthetic PNG data, output.

Every benchmark prints progress lines and, as its LAST line, one JSON object with its results.
"""

from __future__ import annotations

import io
import json
import os
import platform
import time
import warnings
from multiprocessing import Pool

import numpy as np

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
# decode() returns read-only arrays (views of Pillow images); the DataLoader's collate copies them anyway
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))


def machine() -> dict:
    """What the numbers were measured on, and how busy the machine was at the start."""
    import torch

    info = {
        "host_cpus": cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        import ray

        info["ray"] = ray.__version__
    except ImportError:
        pass
    return info


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def emit(result: dict) -> None:
    """The benchmark's result: one JSON object, the last line of its output."""
    print(json.dumps(result, sort_keys=True), flush=True)


def parse_args(parser, argv, smoke: dict):
    """parser's arguments, with --smoke added: with it, the sizes in `smoke` replace those of the
    command line, whose other options (--gpu, --backbones, ...) still hold, so that any command line
    of a benchmark, --smoke added, runs tiny. Every benchmark has this mode; CI runs each in it
    (tests/benchmarks), and `gpu_check.sh --smoke` runs its steps in it. It measures nothing."""
    parser.add_argument("--smoke", action="store_true",
                        help=f"tiny sizes ({', '.join(f'{k}={v}' for k, v in smoke.items())}), to check that "
                             "the script runs (CI); its numbers mean nothing")
    args = parser.parse_args(argv)
    for key, value in smoke.items() if args.smoke else ():
        setattr(args, key, value)
    return args


class TreeCpu:
    """CPU seconds used by this process and all its descendants while the block runs.

    That covers DataLoader workers and, after ray.init, the local Ray cluster (gcs, raylet, the
    workers and actors under it). Ray's processes are not reaped with accounting, so a process's
    time is lost when it exits: a thread samples every process of the tree every `interval`
    seconds and keeps each one's last reading (at most `interval` of a process's life is lost).
    Unlike wall time, CPU time barely moves when other work shares the machine.

        with TreeCpu() as cpu:
            work()
        cpu.seconds

    new_only: count this process and the processes started in the block (e.g. DataLoader workers),
    not those that were already running (e.g. an idle local Ray cluster).
    """

    def __init__(self, interval: float = 0.25, new_only: bool = False):
        import threading

        self.interval, self.new_only, self.seconds = interval, new_only, 0.0
        self._stop, self._thread = threading.Event(), threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> dict:
        import psutil

        root, out = psutil.Process(), {}
        for proc in [root, *root.children(recursive=True)]:
            try:
                t = proc.cpu_times()
                out[(proc.pid, proc.create_time())] = t.user + t.system
            except psutil.Error:
                pass
        return out

    def _loop(self):
        while not self._stop.wait(self.interval):
            self._last.update(self._sample())

    def __enter__(self):
        self._base = self._sample()
        self._last = dict(self._base)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._last.update(self._sample())
        root = next(iter(self._base))  # this process, sampled first
        counted = {k: v for k, v in self._last.items() if not self.new_only or k == root or k not in self._base}
        self.seconds = sum(v - self._base.get(k, 0.0) for k, v in counted.items())


# --------------------------------------------------------------------------- the naive path's pieces

class DecodedImages:
    """torch Dataset: read one file's bytes and decode it exactly as the pipeline's DecodeBatch does."""

    def __init__(self, uris, contract):
        from raddist.data.contract import PreprocessContract

        self.uris, self.contract = list(uris), PreprocessContract.from_dict(contract)

    def __len__(self):
        return len(self.uris)

    def __getitem__(self, i):
        from raddist import storage
        from raddist.data.transforms import decode

        return decode(self.uris[i], storage.read_bytes(self.uris[i]), self.contract)


def build_embedder(job, device: str):
    from raddist.backbones.embedder import Embedder
    from raddist.backbones.registry import get_config
    from raddist.backbones.weights import build_model

    config = get_config(job.backbone.name)
    model = build_model(config, job.backbone.weights)
    return Embedder(config, model, job.features["n_last_blocks"], job.features["patch_mean"],
                    patch_tokens=job.features.get("patch_tokens", 0)).to(device).eval()



# --------------------------------------------------------------------------- synthetic PNG images

def _jpeg(args) -> bytes:
    """The same image as _png, as a quality-90 JPEG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.open(io.BytesIO(_png(args))).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _png(args) -> bytes:
    """One 8-bit grayscale 'radiograph': a bright body ellipse, a few blobs, smooth shading and noise.

    The noise keeps the PNG's size (and so its decode cost) near that of a real radiograph,
    roughly 0.6 bytes per pixel, instead of the near-free decode of a flat synthetic image.
    """
    from PIL import Image

    seed, size = args
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / np.float32(size)
    cy, cx = rng.uniform(0.45, 0.55, 2)
    img = 40 + 120 * np.exp(-(((y - cy) / 0.35) ** 2 + ((x - cx) / 0.3) ** 2) ** 2)
    for _ in range(int(rng.integers(1, 4))):
        by, bx, r = rng.uniform(0.25, 0.75), rng.uniform(0.25, 0.75), rng.uniform(0.02, 0.08)
        img += 60 * np.exp(-((y - by) ** 2 + (x - bx) ** 2) / (2 * r * r))
    img += 20 * y + rng.normal(0, 6, img.shape).astype(np.float32)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "L").save(buf, "PNG")
    return buf.getvalue()


def write_png_dataset(out_dir: str, rows: int, distinct: int, size: int, seed: int = 0, jpeg: bool = False) -> str:
    """`distinct` PNG files of size x size, and a manifest of `rows` rows that cycles over them.

    Rows beyond the distinct files reuse a file under a new sample id: the decode work per row is
    the same, and writing thousands of large PNGs would cost more time than the benchmark itself.
    Returns the manifest's path.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = os.path.join(out_dir, "images")
    os.makedirs(images, exist_ok=True)
    distinct = min(distinct, rows)
    with Pool(cpu_count()) as pool:
        blobs = pool.map(_jpeg if jpeg else _png, [(seed * 1_000_003 + i, size) for i in range(distinct)], chunksize=8)
    uris = []
    for i, blob in enumerate(blobs):
        uri = os.path.join(images, f"img{i:05d}.{'jpg' if jpeg else 'png'}")
        with open(uri, "wb") as f:
            f.write(blob)
        uris.append(uri)
    table = pa.table({
        "sample_id": [f"s{i:06d}" for i in range(rows)],
        "uri": [uris[i % distinct] for i in range(rows)],
        "patient_id": [f"p{i:06d}" for i in range(rows)],
        "split": [("train", "train", "train", "val", "test")[i % 5] for i in range(rows)],
        "finding": [i % 2 for i in range(rows)],
    })
    path = os.path.join(out_dir, "manifest.parquet")
    pq.write_table(table, path)
    return path


def subset_manifest(path: str, rows: int) -> str:
    """A manifest of the first `rows` rows of another, beside it."""
    import pyarrow.parquet as pq

    out = path.replace(".parquet", f"-{rows}.parquet")
    pq.write_table(pq.read_table(path).slice(0, rows), out)
    return out


# --------------------------------------------------------------------------- memory, Ray

class PeakRss:
    """This process's peak resident set size while the block runs, sampled by a thread every
    `interval` seconds (psutil; /proc/self/status also gives the anonymous and shared-memory parts
    where Linux has it).

        with PeakRss() as rss:
            work()
        rss.base_mb, rss.peak_mb, rss.growth_mb, rss.peak_parts_mb

    base: the reading when the block starts; growth: peak - base. RssShmem counts the pages of Ray's
    object store (shared memory) that this process has mapped and touched: the blocks it ray.get-s.
    """

    def __init__(self, interval: float = 0.05):
        import threading

        self.interval = interval
        self._stop, self._thread = threading.Event(), threading.Thread(target=self._loop, daemon=True)
        self.samples = 0

    @staticmethod
    def _parts() -> dict:
        out = {}
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith(("RssAnon:", "RssFile:", "RssShmem:")):
                        name, value = line.split(":")
                        out[name] = int(value.split()[0]) / 1024  # kB -> MB
        except OSError:
            pass
        return out

    def _read(self) -> float:
        import psutil

        return psutil.Process().memory_info().rss / 2**20

    def _loop(self):
        while not self._stop.wait(self.interval):
            rss = self._read()
            self.samples += 1
            if rss > self.peak_mb:
                self.peak_mb, self.peak_parts_mb = rss, self._parts()

    def __enter__(self):
        import gc

        gc.collect()
        self.base_mb = self.peak_mb = self._read()
        self.base_parts_mb = self.peak_parts_mb = self._parts()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        rss = self._read()
        if rss > self.peak_mb:
            self.peak_mb, self.peak_parts_mb = rss, self._parts()
        self.end_mb = rss
        self.growth_mb = self.peak_mb - self.base_mb

    def summary(self) -> dict:
        return {"base_mb": round(self.base_mb, 1), "peak_mb": round(self.peak_mb, 1),
                "growth_mb": round(self.growth_mb, 1), "end_mb": round(self.end_mb, 1),
                "base_parts_mb": {k: round(v, 1) for k, v in self.base_parts_mb.items()},
                "peak_parts_mb": {k: round(v, 1) for k, v in self.peak_parts_mb.items()}, "samples": self.samples}


def start_ray(cpus: int) -> None:
    """A fresh local Ray cluster of `cpus` CPUs (never one a `ray start` left running), quiet."""
    import logging

    import ray

    ray.init(address="local", num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING,
             log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = ctx.print_on_execution_start = False
    for name in ("ray", "ray.data", "ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal").setLevel(logging.ERROR)


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)
