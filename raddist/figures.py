"""The report's figures, as PNG bytes: few-shot curves and the leaderboard."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fewshot_plot(table: pd.DataFrame, task: str, metric: str) -> bytes:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for (backbone, probe), g in table.groupby(["backbone", "probe"]):
        g = g.sort_values("shots")
        ax.errorbar(g["shots"], g["value"], yerr=g["std"].fillna(0), marker="o", capsize=3, label=f"{backbone} / {probe}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("shots per class")
    ax.set_ylabel(f"test {metric} (mean ± std over draws)")
    ax.set_title(f"{task}: few-shot")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def leaderboard_plot(board: pd.DataFrame) -> bytes:
    """Backbone (rows) x task (columns): value and 95% CI in each cell, coloured by the value's rank
    within its task, so that tasks on different scales share one colour scale."""
    plt = _pyplot()
    value = board.pivot(index="backbone", columns="task", values="value")
    low = board.pivot(index="backbone", columns="task", values="ci_low").reindex_like(value)
    high = board.pivot(index="backbone", columns="task", values="ci_high").reindex_like(value)
    rank = value.rank(pct=True)
    fig, ax = plt.subplots(figsize=(1.9 * value.shape[1] + 2.5, 0.55 * value.shape[0] + 1.8))
    ax.imshow(rank.to_numpy(dtype=float), cmap="viridis", aspect="auto", vmin=0, vmax=1)
    for i in range(value.shape[0]):
        for j in range(value.shape[1]):
            v = value.iat[i, j]
            if np.isnan(v):
                continue
            ci = f"\n[{low.iat[i, j]:.3f}, {high.iat[i, j]:.3f}]" if not np.isnan(low.iat[i, j]) else ""
            ax.text(j, i, f"{v:.3f}{ci}", ha="center", va="center", fontsize=7,
                    color="black" if rank.iat[i, j] > 0.5 else "white")
    ax.set_xticks(range(value.shape[1]), value.columns, fontsize=7)
    ax.set_yticks(range(value.shape[0]), value.index, fontsize=8)
    ax.set_title("test value [95% CI]; colour: rank within the task")
    fig.tight_layout()
    return _png(fig)


def reliability_plot(curves: dict, task: str, n_bins: int = 15) -> bytes:
    """Reliability diagrams of one task: a panel per (backbone, protocol) key of curves, each
    (mean probability, observed frequency) per equal-mass bin, against the diagonal."""
    plt = _pyplot()
    keys = sorted(curves)
    cols = min(4, len(keys)) or 1
    rows = max(1, -(-len(keys) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.ravel()[len(keys):]:
        ax.axis("off")
    for ax, key in zip(axes.ravel(), keys):
        x, y = curves[key]
        ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle="--")
        ax.plot(x, y, marker="o", markersize=3)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(" / ".join(map(str, key)), fontsize=7)
        ax.tick_params(labelsize=6)
    fig.suptitle(f"{task}: reliability ({n_bins} equal-mass bins; x: mean probability, y: observed frequency)", fontsize=8)
    fig.tight_layout()
    return _png(fig)
