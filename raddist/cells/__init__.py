"""One evaluation cell: its inputs (inputs.py), its run and scores (run.py), its outputs (outputs.py).

    evaluate_cell(cell, key, CellContext(...))   # in a Ray Tune trial, where Ray placed it
"""

from raddist.cells.run import CellContext, evaluate_cell

__all__ = ["CellContext", "evaluate_cell"]
