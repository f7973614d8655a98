"""Linear probing: the whole head grid trained at once against the heads trained one at a time.

Same features, labels, epochs, batch size, seed and grid for all three:

  parallel     raddist.protocols.linear.train_heads(all heads): one pass over the features per epoch,
               the heads of one feature variant one (D, heads x C) matrix product;
  one_by_one   train_heads([head]) for each head of the grid: its own loop, its own passes;
  plain        one torch.nn.Linear + torch.optim.SGD loop per head, as a probe is usually written
               (the same SGD, momentum, cosine decay, standardisation, batch order and loss).

The parallel and one_by_one runs must agree head by head (a head's run depends on its seed, config
and data only), which this benchmark checks, so the comparison is of the same computation.
The features are synthetic, shaped as a cache of the given backbone width (cls of the last 4 blocks
plus the mean patch token), multilabel with signal in them. Rate: heads x epochs per second; one
untimed warm-up of each path first (torch.optim's lazy imports alone take seconds).

  python benchmarks/linear_heads.py                      # 28 heads, 5,000 x 1,920 features, 10 epochs
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np

from common import emit, machine, parse_args, say


def make_inputs(n: int, dim: int, blocks: int, classes: int, seed: int = 0):
    from raddist.protocols.base import FrozenInputs, SplitData

    rng = np.random.default_rng(seed)
    width = dim * (blocks + 1)
    x = rng.standard_normal((n, width), dtype=np.float32)
    w = rng.standard_normal((width, classes), dtype=np.float32) / math.sqrt(width)
    labels = ((x @ w + 0.5 * rng.standard_normal((n, classes))) > 0.8).astype(np.int64)
    ids = np.array([f"s{i}" for i in range(n)], dtype=object)
    split = SplitData(features={"cls": x[:, : dim * blocks], "patch_mean": x[:, dim * blocks :]}, labels=labels,
                      sample_ids=ids, patient_ids=ids)
    inputs = FrozenInputs(task_type="multilabel", class_names=[f"c{i}" for i in range(classes)],
                          block_dims=[dim] * blocks, splits={"train": split})
    return inputs, split


def plain_head(x: np.ndarray, y: np.ndarray, cols, lr: float, params, seed: int) -> np.ndarray:
    """One head, written the ordinary way: nn.Linear, optim.SGD, a cosine LambdaLR. Returns epoch losses."""
    import torch

    a, b = cols
    xs = x[:, a:b]
    mean, std = xs.mean(0), xs.std(0)
    std[std < 1e-8] = 1.0
    xt, yt = torch.from_numpy((xs - mean) / std), torch.from_numpy(y.astype(np.float32))
    head = torch.nn.Linear(b - a, y.shape[1])
    with torch.no_grad():
        head.weight.copy_((torch.randn(b - a, y.shape[1], generator=torch.Generator().manual_seed(seed)) * 0.01).T)
        head.bias.zero_()
    opt = torch.optim.SGD(head.parameters(), lr=lr * params.batch_size / 256, momentum=params.momentum)
    n, batch = len(xt), min(params.batch_size, len(xt))
    total = params.epochs * math.ceil(n / batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    order_gen, losses = torch.Generator().manual_seed(seed), []
    for _ in range(params.epochs):
        order, epoch_loss = torch.randperm(n, generator=order_gen), 0.0
        for start in range(0, n, batch):
            rows = order[start : start + batch]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(head(xt[rows]), yt[rows], reduction="none")
            loss = loss.sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            epoch_loss += loss.item() * len(rows) / n
        losses.append(epoch_loss)
    return np.array(losses)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=5_000, help="training samples")
    parser.add_argument("--dim", type=int, default=384, help="backbone width (384: ViT-S, 768: ViT-B)")
    parser.add_argument("--blocks", type=int, default=4, help="cached blocks (the grid uses 1 and all)")
    parser.add_argument("--classes", type=int, default=15, help="labels (NIH ChestX-ray14: 14 + No Finding)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads to try")
    parser.add_argument("--one-by-one-heads", type=int, default=0,
                        help="time only this many heads one at a time and scale up (0: all of them)")
    args = parse_args(parser, argv, {"samples": 300, "dim": 32, "classes": 4, "epochs": 2, "threads": [1],
                                     "one_by_one_heads": 2})

    import torch

    from raddist.protocols import linear
    from raddist.protocols.features import column_range

    info = machine()
    say(f"machine: {info}")
    params = linear.Params(epochs=args.epochs, batch_size=args.batch_size, blocks=[1, args.blocks])
    inputs, split = make_inputs(args.samples, args.dim, args.blocks, args.classes)
    configs = linear.head_grid(inputs, split, params)
    subset = configs[: args.one_by_one_heads] if args.one_by_one_heads else configs
    say(f"{len(configs)} heads ({len(params.lrs)} lrs x blocks {sorted(set(params.blocks))} x pools {params.pools}), "
        f"{args.samples} x {split.features['cls'].shape[1] + args.dim} features, {args.classes} labels, "
        f"{args.epochs} epochs, batch {args.batch_size}; one at a time: {len(subset)} heads")
    x, y = np.concatenate([split.features["cls"], split.features["patch_mean"]], 1), split.labels

    # warm-up, untimed: first-use costs (lazy imports in torch.optim, allocator) hit no timed run
    warm = linear.Params(epochs=1, batch_size=args.batch_size, blocks=[1, args.blocks])
    linear.train_heads(inputs, split, configs[:1], warm, seed=0)
    plain_head(x, y, column_range(inputs.block_dims, 1, False, args.dim), 0.1, warm, seed=0)

    by_threads = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        grid = linear.train_heads(inputs, split, configs, params, seed=0)
        parallel_s = time.perf_counter() - t0

        t0, single = time.perf_counter(), []
        for c in subset:
            single.append(linear.train_heads(inputs, split, [c], params, seed=0).loss[0])
        one_s = (time.perf_counter() - t0) * len(configs) / len(subset)
        gap = float(np.max(np.abs(np.array(single) - grid.loss[: len(subset)])))
        assert gap < 1e-3, f"parallel and one-at-a-time heads differ: max loss gap {gap}"

        t0, plain = time.perf_counter(), []
        for c in subset:
            cols = column_range(inputs.block_dims, c.blocks, c.pool == "cls_patch", args.dim)
            plain.append(plain_head(x, y, cols, c.lr, params, seed=0))
        plain_s = (time.perf_counter() - t0) * len(configs) / len(subset)
        plain_gap = float(np.max(np.abs(np.array(plain) - grid.loss[: len(subset)])))

        rate = {k: len(configs) * args.epochs / s for k, s in
                (("parallel", parallel_s), ("one_by_one", one_s), ("plain", plain_s))}
        by_threads[str(threads)] = {
            **{f"{k}_head_epochs_s": round(v, 1) for k, v in rate.items()},
            "parallel_s": round(parallel_s, 2), "one_by_one_s": round(one_s, 2), "plain_s": round(plain_s, 2),
            "speedup": round(rate["parallel"] / rate["one_by_one"], 2),
            "speedup_vs_plain": round(rate["parallel"] / rate["plain"], 2),
            "max_loss_gap": gap, "plain_max_loss_gap": plain_gap,
        }
        row = by_threads[str(threads)]
        say(f"  threads={threads}: parallel {parallel_s:.2f}s, one at a time {one_s:.2f}s, plain {plain_s:.2f}s "
            f"-> speedup {row['speedup']}x (vs plain {row['speedup_vs_plain']}x)")

    def best(key):
        return max(r[key] for r in by_threads.values())

    out = {
        "speedup": round(best("parallel_head_epochs_s") / best("one_by_one_head_epochs_s"), 2),
        "speedup_vs_plain": round(best("parallel_head_epochs_s") / best("plain_head_epochs_s"), 2),
        "parallel_head_epochs_s": best("parallel_head_epochs_s"),
        "one_by_one_head_epochs_s": best("one_by_one_head_epochs_s"),
        "plain_head_epochs_s": best("plain_head_epochs_s"),
        "heads": len(configs), "one_by_one_heads_timed": len(subset), "epochs": args.epochs,
        "samples": args.samples, "features": int(x.shape[1]), "classes": args.classes,
        "batch_size": args.batch_size, "by_threads": by_threads, "machine": info,
        "load_avg_1m_end": round(os.getloadavg()[0], 2),
        "timing": "each path at its best thread count; rate = heads x epochs / wall seconds",
    }
    emit(out)
    return out


if __name__ == "__main__":
    main()
