"""The report's figures (raddist.figures) are PNGs whose size follows the table they draw."""

import io

import numpy as np
import pandas as pd
from PIL import Image

from raddist.figures import fewshot_plot, leaderboard_plot


def size(png: bytes):
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(png)) as im:
        return im.size


def test_fewshot_plot_is_a_png_of_a_fixed_size():
    table = pd.DataFrame({"backbone": ["a"] * 3 + ["b"] * 3, "probe": ["knn"] * 6, "shots": [1, 4, 16] * 2,
                          "value": [0.6, 0.7, 0.8, 0.55, 0.6, 0.75], "std": [0.05, np.nan, 0.01, 0.1, 0.02, 0.0]})
    assert size(fewshot_plot(table, "chest", "auroc")) == (660, 440)  # 6 x 4 inches at 110 dpi


def test_leaderboard_grows_with_backbones_and_tasks():
    def board(backbones, tasks):
        rows = [{"backbone": f"b{i}", "task": f"t{j}", "value": 0.5 + 0.01 * i * j,
                 "ci_low": np.nan if i == j else 0.4, "ci_high": np.nan if i == j else 0.9}
                for i in range(backbones) for j in range(tasks) if (i, j) != (0, 1)]  # one cell missing
        return pd.DataFrame(rows)

    small, wide, tall = size(leaderboard_plot(board(2, 2))), size(leaderboard_plot(board(2, 4))), \
        size(leaderboard_plot(board(6, 2)))
    def near(a, b):  # within a pixel of matplotlib's rounding
        return abs(a - b) <= 1

    assert near(small[0], (1.9 * 2 + 2.5) * 110) and near(small[1], (0.55 * 2 + 1.8) * 110)  # inches at 110 dpi
    assert near(wide[0] - small[0], 1.9 * 2 * 110) and wide[1] == small[1]  # 1.9 inches a task
    assert near(tall[1] - small[1], 0.55 * 4 * 110) and tall[0] == small[0]  # 0.55 inches a backbone
