"""The report's backbone section: each backbone's licence, whether its weights are gated, and the exact
weights it ran with (the identity recorded in the output's provenance.json: a hub repository at its
resolved or pinned revision, a file by URI, size and mtime, or random)."""

from __future__ import annotations

from typing import List

from raddist import storage
from raddist.provenance import RECORD


def backbones_section(output: str) -> str:
    """Markdown lines (empty when the output has no provenance record yet)."""
    uri = storage.join(output, RECORD)
    if not storage.exists(uri):
        return ""
    backbones = storage.read_json(uri).get("backbones", {})
    if not backbones:
        return ""
    lines: List[str] = ["", "## Backbones — licence and weights", "",
                        "| backbone | model | licence | gated | weights |", "|---|---|---|---|---|"]
    for label, entry in sorted(backbones.items()):
        lines.append(f"| {label} | {entry.get('name', label)} | {entry.get('license') or 'not recorded'} | "
                     f"{'yes' if entry.get('gated') else 'no'} | `{entry.get('weights', '')}` |")
    return "\n".join(lines) + "\n"
