"""The report's "Choices that change a number": the stopping rules the heads trained under, what
few-shot selection saw, how threshold metrics are thresholded, and the bootstrap behind every CI.
Read from the cells' own records (cell.json), so it says what ran, not what a config asked for."""

from __future__ import annotations

from collections import Counter
from typing import Iterable, List


def choices_section(cells: Iterable[dict], summary: dict) -> str:
    cells = list(cells)
    lines = ["## Choices that change a number", ""]
    lines += _stopping(cells)
    lines += _fewshot(cells)
    lines += ["- **Thresholds**: accuracy, balanced accuracy and F1 threshold multilabel and binary scores at a "
              "fixed 0.5. kNN scores are vote fractions and linear heads' are sigmoids, so these metrics do not "
              "compare across protocols; the headline tables use AUROC (Dice for segmentation), which needs no "
              "threshold."]
    boot = summary.get("bootstrap")
    if boot:
        lines.append(f"- **Confidence intervals**: percentile bootstrap of {boot:,} resamples of patients (a patient's "
                     "images move together). `raddist compare` sizes its own resamples to its family of tests, and "
                     "says how many it used.")
    return "\n".join(lines) + "\n"


def _stopping(cells: List[dict]) -> List[str]:
    rules = Counter((c.get("protocol"), (c.get("selected") or {}).get("stopping_rule")) for c in cells)
    rules = {k: n for k, n in rules.items() if k[1]}
    if not rules:
        return []
    capped = Counter(c.get("protocol") for c in cells if (c.get("selected") or {}).get("stopped") == "cap")
    out = ["- **Stopping**: trained heads keep their best validation epoch under these rules:"]
    for (protocol, rule), n in sorted(rules.items()):
        cap = f"; {capped[protocol]} stopped at their epoch cap" if capped.get(protocol) else ""
        out.append(f"  - `{protocol}` ({n} cells): {rule}{cap}")
    return out


def _fewshot(cells: List[dict]) -> List[str]:
    seen = Counter((c.get("selected") or {}).get("validation") for c in cells if c.get("protocol") == "fewshot")
    seen.pop(None, None)
    if not seen:
        return []
    words = {"kshot": "a k-shot draw of the validation split (as many examples as the training draw)",
             "full": "the whole validation split (more than a k-shot user has)"}
    parts = [f"{words.get(v, v)} in {n} cells" for v, n in sorted(seen.items())]
    return ["- **Few-shot selection** (hyperparameters and early stopping) saw " + "; ".join(parts) + "."]
