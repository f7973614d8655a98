"""Gathering a finished study's cells from S3: raddist.results.gather (one listing, then every file
read by a pool of READ_THREADS threads) against the sequential gather it replaced (a copy below: per
cell an exists() on cell.json, then its files one request after another).

Store: a moto S3 server (moto.server.ThreadedMotoServer on 127.0.0.1, port 0, as tests/conftest.py
starts it), by default in a process of its own (--moto-in-process: in this one, as the tests run
it; it then shares this process's GIL). moto is Python: every request costs it about 3 ms of CPU
under one GIL, whatever the client's parallelism, and that caps any speedup measured against it
(the output gives moto's and the client's CPU seconds per run, and the requests per cell).

Cells: --cells real Cell objects from raddist.plan (2 tiny backbones x 4 tasks x knn x --cells/8
seeds: 3,192 by default, the reference study's count), each with the files raddist.results.write_cell
writes (its storage.write_bytes pointed straight at moto's backend, in moto's process: seconds
instead of minutes of PUTs) under s3://BUCKET/out/cells/<id>/: metrics.parquet (6 metrics with
CIs), predictions.parquet (--test-rows rows) and cell.json.

Timed, each gather call whole (listing or exists() calls, reads, concatenation, results.parquet and
predictions.parquet written to s3://BUCKET/out/):
  parallel             raddist.results.gather over all --cells cells;
  sequential           the old gather over a sample of --sequential-cells cells spread over the
                       plan, scaled to --cells (it is a loop of the same requests per cell);
  parallel_ranged      raddist.results.gather with storage.read_parquet as it was before it read
                       whole objects (read_parquet_ranged: pq.read_table on the S3 path, 5 requests
                       for a small file instead of 2), on --ranged-cells cells, scaled. The
                       sequential gather reads that way too, as it did.
Requests per cell of each (counted by a proxy, at two sizes so the fixed requests cancel), and the
tables checked equal (sequential vs parallel, on the sample).

With --latency-ms (default 20): the three again through a TCP proxy that holds every request that
long, as the first-byte latency of S3 does (moto on the loopback has none: there a request costs only
CPU, which a 2-core box cannot parallelise); per-cell rates from smaller samples.

  speedup = sequential wall (scaled to --cells) / raddist.results.gather wall, moto direct

  python benchmarks/gather.py
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from common import emit, load_avg, machine, parse_args, say

PER_CELL_TABLES = ("predictions.parquet", "cases.parquet")


# --------------------------------------------------------------------------- the old gather, copied

def gather_sequential(output: str, cells) -> dict:
    """raddist.results.gather before the rewrite: every cell's files, one request at a time."""
    import pyarrow as pa

    from raddist import storage
    from raddist.results import cell_dir, is_done

    metrics, infos, tables = [], [], {name: [] for name in PER_CELL_TABLES}
    for cell in cells:
        if not is_done(output, cell):
            continue
        d = cell_dir(output, cell.id)
        metrics.append(read_parquet_ranged(storage.join(d, "metrics.parquet")))
        for name in PER_CELL_TABLES:
            if storage.exists(storage.join(d, name)):
                tables[name].append(read_parquet_ranged(storage.join(d, name)))
        infos.append(storage.read_json(storage.join(d, "cell.json")))
    gathered = {"cells": infos}
    for name, parts in [("results.parquet", metrics)] + list(tables.items()):
        table = pa.concat_tables(parts, promote_options="default") if parts else None
        if table is not None:
            storage.write_parquet(storage.join(output, name), table)
        gathered[name.removesuffix(".parquet")] = table
    return gathered


def read_parquet_ranged(uri: str, columns=None):
    """raddist.storage.read_parquet before it read whole objects: pq.read_table on the S3 path, which
    makes 5 requests for a small file (3 HEADs: file info, dataset discovery, open; 2 ranged GETs:
    footer, data). The whole-object read makes 2 (a HEAD and a GET, with pyarrow's S3 filesystem)."""
    import pyarrow.parquet as pq

    from raddist import storage

    fs, path = storage.filesystem(uri)
    return pq.read_table(path, filesystem=fs, columns=columns)


def gather_ranged(output: str, cells) -> dict:
    """raddist.results.gather as it is, with storage.read_parquet as it was (read_parquet_ranged)."""
    from raddist import results, storage

    original = storage.read_parquet
    storage.read_parquet = read_parquet_ranged
    try:
        return results.gather(output, cells)
    finally:
        storage.read_parquet = original


# --------------------------------------------------------------------------- moto, a latency proxy

BUCKET = "raddist-gather"
ACCOUNT = "123456789012"  # moto's account for any access key it does not know


def populate(n_cells: int, test_rows: int) -> float:
    """Write the finished cells straight into moto's backend (in moto's process: no HTTP, so the
    setup of ~10,000 objects takes seconds, not minutes); the objects are those raddist.results.write_cell
    writes (its storage.write_bytes redirected). Returns the seconds it took."""
    from moto.s3.models import s3_backends

    from raddist import storage

    t0 = time.perf_counter()
    backend = s3_backends[ACCOUNT]["aws"]
    backend.get_bucket(BUCKET)  # created over HTTP first, under the same account
    original = storage.write_bytes
    storage.write_bytes = lambda uri, data: backend.put_object(BUCKET, uri.split(f"{BUCKET}/", 1)[1], data)
    try:
        write_cells(f"s3://{BUCKET}/out", make_cells(n_cells), test_rows, threads=1)
    finally:
        storage.write_bytes = original
    return time.perf_counter() - t0


def _moto_process(conn):
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    conn.send(server.get_host_and_port())
    while True:
        msg = conn.recv()
        if msg[0] == "stop":
            break
        conn.send(populate(*msg[1:]))
    server.stop()


class Moto:
    """A moto S3 server on 127.0.0.1, port 0: in a process of its own (default) or in this one."""

    def __init__(self, in_process: bool):
        self.in_process = in_process
        if in_process:
            import logging

            from moto.server import ThreadedMotoServer

            logging.getLogger("werkzeug").setLevel(logging.ERROR)
            self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            self.server.start()
            host, port = self.server.get_host_and_port()
        else:
            ctx = mp.get_context("spawn")
            self.conn, child = ctx.Pipe()
            self.proc = ctx.Process(target=_moto_process, args=(child,), daemon=True)
            self.proc.start()
            host, port = self.conn.recv()
        self.port = port
        self.endpoint = f"http://{host}:{port}"

    def cpu_s(self) -> float:
        """CPU seconds moto's own process has used (0 when it runs in this one)."""
        import psutil

        if self.in_process:
            return 0.0
        t = psutil.Process(self.proc.pid).cpu_times()
        return t.user + t.system

    def populate(self, n_cells: int, test_rows: int) -> float:
        if self.in_process:
            return populate(n_cells, test_rows)
        self.conn.send(("populate", n_cells, test_rows))
        return self.conn.recv()

    def stop(self):
        if self.in_process:
            self.server.stop()
            return
        self.conn.send(("stop",))
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.terminate()


class DelayProxy:
    """A TCP proxy on 127.0.0.1 in front of moto (a thread per connection) that holds each HTTP
    request `delay` seconds before passing it on, as a round trip to a remote object store would
    (its bandwidth is not modelled), and counts the requests by method."""

    METHODS = (b"GET ", b"HEAD ", b"PUT ", b"POST ", b"DELETE ")

    def __init__(self, target_port: int, delay: float):
        self.target, self.delay = ("127.0.0.1", target_port), delay
        self.counts, self._lock = {}, threading.Lock()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client):
        upstream = socket.create_connection(self.target)
        threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()
        self._pump(client, upstream, True)

    def _pump(self, src, dst, requests: bool):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if requests and data.startswith(self.METHODS):  # a new request (a body's chunks are not)
                    method = data.split(b" ", 1)[0].decode()
                    with self._lock:
                        self.counts[method] = self.counts.get(method, 0) + 1
                    if self.delay:
                        time.sleep(self.delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def take_counts(self) -> dict:
        with self._lock:
            counts, self.counts = self.counts, {}
        return counts

    def close(self):
        self.sock.close()


def use_endpoint(url: str) -> None:
    """Point raddist.storage at `url` (it keys its cached S3 filesystem by the endpoint)."""
    os.environ["AWS_ENDPOINT_URL"] = url


# --------------------------------------------------------------------------- synthetic finished cells

def make_cells(n: int):
    from raddist import spec as spec_lib
    from raddist.plan import make_plan

    seeds = max(1, -(-n // 8))
    spec = spec_lib.parse({
        "backbones": [{"name": "tiny_vit", "weights": "random"}, {"name": "tiny_cnn", "weights": "random"}],
        "tasks": [{"name": f"task{t}", "manifest": f"s3://bucket/manifests/task{t}.parquet", "type": "binary",
                   "labels": ["finding"]} for t in range(4)],
        "protocols": [{"name": "knn"}],
        "seeds": list(range(seeds)),
    })
    return make_plan(spec).cells[:n]


def write_cells(output: str, cells, test_rows: int, threads: int = 32) -> None:
    import numpy as np
    import pyarrow as pa

    from raddist.results import write_cell

    def one(i_cell):
        i, cell = i_cell
        rng = np.random.default_rng(i)
        metrics = [{"metric": m, "value": float(v), "ci_low": float(v) - 0.05, "ci_high": float(v) + 0.05}
                   for m, v in zip(("auroc", "auprc", "accuracy", "f1", "sensitivity", "specificity"), rng.random(6))]
        preds = pa.table({"cell_id": [cell.id] * test_rows, "sample_id": [f"s{i}-{k}" for k in range(test_rows)],
                          "patient_id": [f"p{i}-{k // 2}" for k in range(test_rows)],
                          "label": rng.integers(0, 2, test_rows), "score": rng.random(test_rows)})
        info = {"embeddings": "0" * 16, "selected": {"k": 20}, "val_score": 0.7, "n_test": test_rows,
                "seconds": 0.1, "wall_seconds": 0.2, "cpu_seconds": 0.2, "gpu_seconds": 0.0}
        write_cell(output, cell, metrics, {"predictions.parquet": preds}, info)

    if threads == 1:
        for item in enumerate(cells):
            one(item)
        return
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, enumerate(cells)))


def same(a: dict, b: dict) -> bool:
    def norm(t):
        keys = [c for c in ("cell_id", "metric", "sample_id") if c in t.column_names]
        return t.sort_by([(c, "ascending") for c in keys])
    ok = len(a["cells"]) == len(b["cells"])
    for name in ("results", "predictions"):
        ta, tb = a.get(name), b.get(name)
        ok = ok and (ta is None) == (tb is None) and (ta is None or norm(ta).equals(norm(tb)))
    return ok


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, default=3192, help="finished cells in the output")
    p.add_argument("--test-rows", type=int, default=50, help="rows of each cell's predictions.parquet")
    p.add_argument("--sequential-cells", type=int, default=320,
                   help="cells the sequential gather is timed on, its time scaled to --cells (0: all)")
    p.add_argument("--ranged-cells", type=int, default=800,
                   help="cells the ranged-read gather is timed on, scaled to --cells (0: all)")
    p.add_argument("--latency-ms", type=float, default=20.0,
                   help="also time both gathers through a proxy that holds every request this long (0: skip)")
    p.add_argument("--latency-cells", type=int, default=320, help="cells the parallel gathers read at that latency")
    p.add_argument("--latency-sequential-cells", type=int, default=48,
                   help="cells the sequential gather reads at that latency")
    p.add_argument("--count-cells", type=int, default=8, help="cells whose requests are counted, per way")
    p.add_argument("--moto-in-process", action="store_true", help="moto in this process, as the tests run it")
    args = parse_args(p, argv, {"cells": 24, "test_rows": 10, "sequential_cells": 8, "ranged_cells": 8,
                                "count_cells": 2, "latency_ms": 2.0, "latency_cells": 8, "latency_sequential_cells": 4})

    started, info = time.perf_counter(), machine()
    say(f"machine: {info}")
    moto = Moto(args.moto_in_process)
    os.environ.update({"AWS_ENDPOINT_URL": moto.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
                       "AWS_EC2_METADATA_DISABLED": "true"})
    os.environ.pop("AWS_ENDPOINT_URL_S3", None)
    proxy = None
    try:
        import boto3

        from raddist import results

        boto3.client("s3", endpoint_url=moto.endpoint, region_name="us-east-1").create_bucket(Bucket=BUCKET)
        output = f"s3://{BUCKET}/out"
        setup_s = moto.populate(args.cells, args.test_rows)
        cells = make_cells(args.cells)
        say(f"moto at {moto.endpoint} ({'this process' if args.moto_in_process else 'its own process'}); "
            f"{len(cells)} finished cells ({3 * len(cells)} objects) put into it in {setup_s:.1f}s")
        ways = {"sequential": gather_sequential, "parallel": results.gather, "parallel_ranged": gather_ranged}

        def timed(way: str, subset, label: str) -> dict:
            import psutil

            load0 = load_avg()
            me, moto0 = psutil.Process(), moto.cpu_s()
            c0 = sum(me.cpu_times()[:2])
            t = time.perf_counter()
            out = ways[way](output, subset)
            wall = time.perf_counter() - t
            cpu = {"client": round(sum(me.cpu_times()[:2]) - c0, 1), "moto": round(moto.cpu_s() - moto0, 1)}
            assert len(out["cells"]) == len(subset), (way, len(out["cells"]), len(subset))
            say(f"  {label}: {way:19s} {len(subset):5d} cells in {wall:6.2f}s ({1e3 * wall / len(subset):.1f} ms "
                f"per cell; CPU-s {cpu}), load {load0} -> {load_avg()}")
            return {"wall_s": round(wall, 2), "cells": len(subset), "cpu_s": cpu, "load_start": load0,
                    "load_end": load_avg(), "out": out}

        # requests per cell, counted by a proxy that adds no delay: two sizes, so the fixed requests
        # (listing, the gathered tables' writes) cancel
        proxy = DelayProxy(moto.port, 0.0)
        use_endpoint(f"http://127.0.0.1:{proxy.port}")
        requests = {}
        for way in ("sequential", "parallel", "parallel_ranged"):
            counts = []
            for n in (args.count_cells, 2 * args.count_cells):
                timed(way, cells[:n], "count")
                counts.append(proxy.take_counts())
            requests[way] = {"per_cell": {m: round((counts[1].get(m, 0) - counts[0].get(m, 0)) / args.count_cells, 2)
                                          for m in sorted(set(counts[0]) | set(counts[1]))},
                             f"total_at_{args.count_cells}_cells": counts[0]}
            say(f"  {way}: requests per cell {requests[way]['per_cell']}")

        # moto directly: the parallel gather over every cell, the sequential one over a sample
        use_endpoint(moto.endpoint)
        n_seq = args.sequential_cells if 0 < args.sequential_cells < len(cells) else len(cells)
        sample = cells[:: max(1, len(cells) // n_seq)][:n_seq]  # spread over backbones and tasks
        n_ranged = args.ranged_cells if 0 < args.ranged_cells < len(cells) else len(cells)
        direct = {"parallel": timed("parallel", cells, "moto"), "sequential": timed("sequential", sample, "moto"),
                  "parallel_ranged": timed("parallel_ranged", cells[:n_ranged], "moto")}
        par_s = direct["parallel"]["wall_s"]
        seq_s = direct["sequential"]["wall_s"] * len(cells) / len(sample)
        ranged_s = direct["parallel_ranged"]["wall_s"] * len(cells) / n_ranged
        equal = same(direct["sequential"]["out"], results.gather(output, sample))

        at_latency = {}
        if args.latency_ms:  # per-cell rates: the sequential gather on a small sample, the parallel ones on more
            proxy.delay = args.latency_ms / 1000
            use_endpoint(f"http://127.0.0.1:{proxy.port}")

            def spread(n):
                return cells[:: max(1, len(cells) // n)][:n]
            lat = {"parallel": timed("parallel", spread(args.latency_cells), f"+{args.latency_ms:g} ms"),
                   "parallel_ranged": timed("parallel_ranged", spread(args.latency_cells),
                                                f"+{args.latency_ms:g} ms"),
                   "sequential": timed("sequential", spread(args.latency_sequential_cells), f"+{args.latency_ms:g} ms")}
            per_cell = {w: r["wall_s"] / r["cells"] for w, r in lat.items()}
            at_latency = {"latency_ms": args.latency_ms,
                          **{f"{w}_ms_per_cell": round(1e3 * v, 1) for w, v in per_cell.items()},
                          **{f"{w}_measured": {"cells": r["cells"], "wall_s": r["wall_s"], "cpu_s": r["cpu_s"]}
                             for w, r in lat.items()},
                          "speedup": round(per_cell["sequential"] / per_cell["parallel"], 2),
                          "speedup_ranged": round(per_cell["sequential"] / per_cell["parallel_ranged"], 2),
                          "load": [lat["parallel"]["load_start"], lat["sequential"]["load_end"]]}
            use_endpoint(moto.endpoint)
    finally:
        if proxy:
            proxy.close()
        moto.stop()

    out = {
        "speedup": round(seq_s / par_s, 2), "parallel_s": par_s, "sequential_s": round(seq_s, 1),
        "sequential_measured": {"cells": len(sample), "wall_s": direct["sequential"]["wall_s"]},
        "speedup_ranged": round(seq_s / ranged_s, 2), "parallel_ranged_s": round(ranged_s, 1),
        "parallel_ranged_measured": {"cells": n_ranged, "wall_s": direct["parallel_ranged"]["wall_s"]},
        "cpu_s": {w: r["cpu_s"] for w, r in direct.items()},
        "same_tables": equal, "requests": requests, "at_latency": at_latency,
        "load": {w: [r["load_start"], r["load_end"]] for w, r in direct.items()},
        "cells": len(cells), "test_rows": args.test_rows, "objects": 3 * len(cells), "setup_s": round(setup_s, 1),
        "read_threads": results.READ_THREADS,
        "moto_cpu_ms_per_request": round(1e3 * direct["parallel"]["cpu_s"]["moto"] / max(
            1, len(cells) * sum(requests["parallel"]["per_cell"].values())), 2), "moto": "in process" if args.moto_in_process else "own process",
        "machine": info, "load_avg_1m_end": load_avg(), "seconds": round(time.perf_counter() - started, 1),
        "timing": "wall of one gather call (listing/exists, reads, concat, results.parquet and predictions.parquet "
                  "written); sequential_s: its wall on the sample scaled to all cells (it is a per-cell loop)",
    }
    emit(out)
    return out


if __name__ == "__main__":
    main()
