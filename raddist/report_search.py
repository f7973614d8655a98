"""The report's "Hyperparameter searches": per searched cell (a trainable protocol with a search:
block), the budget it ran under and the validation curve of its search, best validation AUROC so
far against trial number; and search_curves.png, the same curves drawn. Read from the cells' own
records (cell.json's selected.search), so it says what ran, not what a config asked for."""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Tuple

from raddist import storage

FIGURE = "search_curves.png"


def search_label(search: dict) -> str:
    """A search block in a column label: 'random ×3 + asha' (its space and seed are in cell.json)."""
    n = search.get("num_samples")
    return (str(search.get("algorithm", "random")) + (f" ×{n}" if n else "")
            + (" + asha" if search.get("scheduler") == "asha" else ""))


def best_so_far(by_trial: List[dict]) -> List[Optional[float]]:
    """The best validation score of trials 1..i, for every i (None until a trial reported one)."""
    out: List[Optional[float]] = []
    best = None
    for trial in by_trial:
        score = trial.get("best_val_auroc")
        if score is not None and (best is None or score > best):
            best = score
        out.append(best)
    return out


def searched(cells: Iterable[dict]) -> List[dict]:
    """The cells that ran a search, in a stable order (task, protocol, backbone, seed)."""
    found = [c for c in cells if (c.get("selected") or {}).get("search")]
    return sorted(found, key=lambda c: (str(c.get("task")), str(c.get("protocol")), str(c.get("backbone")),
                                        c.get("seed") or 0, str(c.get("cell_id"))))


def _curve(values: List[Optional[float]]) -> str:
    return " → ".join("–" if v is None else f"{v:.3f}" for v in values)


def _row(cell: dict) -> str:
    s = cell["selected"]["search"]
    winner = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in (s.get("winner") or {}).items())
    return (f"| {cell.get('backbone')} | {cell.get('task')} | {cell.get('protocol')} | {cell.get('seed')} "
            f"| {s.get('trials')} | {s.get('num_samples')} | {s.get('algorithm')} | {s.get('scheduler')} "
            f"| {s.get('stopped_by_asha', 0)} | {_curve(best_so_far(s.get('by_trial') or []))} | {winner} |")


def budget_lines(cells: List[dict]) -> List[str]:
    """Per task and protocol: the trials each backbone's search ran; backbones compared under
    unequal budgets are named as such (plan refuses such a sweep; a report of older runs may show one)."""
    budgets: Dict[Tuple[str, str], Dict[str, set]] = {}
    for c in cells:
        trials = c["selected"]["search"].get("trials")
        budgets.setdefault((c.get("task"), c.get("protocol")), {}).setdefault(c.get("backbone"), set()).add(trials)
    lines = []
    for (task, protocol), per in sorted(budgets.items(), key=lambda kv: tuple(map(str, kv[0]))):
        sizes = {tuple(sorted(v)) for v in per.values()}
        names = ", ".join(sorted(map(str, per)))
        if len(sizes) == 1:
            each = " or ".join(map(str, next(iter(sizes))))
            lines.append(f"- `{protocol}` on {task}: {each} trials for each backbone ({names}).")
        else:
            what = "; ".join(f"{b}: {' or '.join(map(str, sorted(v)))}" for b, v in sorted(per.items(), key=str))
            lines.append(f"- `{protocol}` on {task}: **unequal budgets** ({what}): not a fair comparison.")
    return lines


def search_plot(curves: Dict[str, List[Optional[float]]]) -> bytes:
    """One line per searched cell: best validation AUROC so far against trial number."""
    from raddist.figures import _png, _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, values in sorted(curves.items()):
        ax.step(range(1, len(values) + 1), [float("nan") if v is None else v for v in values], where="post",
                marker="o", label=label)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("trial (in the order the searcher proposed them)")
    ax.set_ylabel("best validation AUROC so far")
    ax.set_title("hyperparameter searches")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def search_section(cells: Iterable[dict], output: Optional[str] = None) -> str:
    """The section's markdown ('' when no cell searched); with output, search_curves.png beside it."""
    cells = searched(cells)
    if not cells:
        return ""
    lines = ["## Hyperparameter searches", "",
             "Each searched cell's trials trained on the train split and were scored on validation only; the "
             "test split was scored once, with the winner. Budget: the trials the search ran (num_samples, "
             "times the grid where one is searched). The curve: the best validation AUROC so far after each "
             "trial, in the order the searcher proposed them.", ""]
    lines += budget_lines(cells) + [""]
    lines += ["| backbone | task | protocol | seed | trials | num_samples | algorithm | scheduler | stopped by ASHA "
              "| best validation AUROC so far, by trial | winner |", "|---" * 11 + "|"]
    lines += [_row(c) for c in cells]
    if output is not None:
        curves = {f"{c.get('backbone')} / {c.get('task')} / {c.get('protocol')} / seed {c.get('seed')}":
                  best_so_far(c["selected"]["search"].get("by_trial") or []) for c in cells}
        storage.write_bytes(storage.join(output, FIGURE), search_plot(curves))
        lines += ["", f"![hyperparameter searches]({FIGURE})"]
    return "\n".join(lines) + "\n\n"
