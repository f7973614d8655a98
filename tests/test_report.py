import json

import pandas as pd

from raddist.report import fewshot_table, render, summary_table


def _rows():
    rows = []
    for backbone, base in (("vit", 0.8), ("cnn", 0.7)):
        rows.append(dict(task="chest", backbone=backbone, protocol="knn", params="{}", seed=0, metric="auroc",
                         value=base, ci_low=base - 0.05, ci_high=base + 0.05))
        for shots in (1, 4):
            for draw in range(5):
                rows.append(dict(task="chest", backbone=backbone, protocol="fewshot",
                                 params=json.dumps({"shots": shots, "draw": draw, "probe": "linear"}), seed=0,
                                 metric="auroc", value=base - 0.1 / shots + 0.01 * draw, ci_low=0.0, ci_high=1.0))
    return pd.DataFrame(rows)


def test_fewshot_is_averaged_over_draws_and_kept_out_of_the_main_table():
    df = _rows()
    main = summary_table(df, "auroc")
    assert set(main["column"]) == {"knn"} and main["n"].tolist() == [1, 1]
    few = fewshot_table(df, "auroc")
    row = few[(few.backbone == "vit") & (few.shots == 1)].iloc[0]
    assert row["n"] == 5
    assert abs(row["value"] - (0.8 - 0.1 + 0.02)) < 1e-12  # mean of draws 0..4 adds 0.02
    assert abs(row["std"] - pd.Series([0.01 * d for d in range(5)]).std()) < 1e-12


def test_render_writes_tables_and_plot(tmp_path):
    text = render(_rows(), {"cells_done": 22, "cells_total": 22}, {"chest": "multilabel"}, output=str(tmp_path))
    assert "| vit | 0.800 [0.750, 0.850] |" in text
    assert "1-shot" in text and "4-shot" in text and "(n=5)" in text
    png = (tmp_path / "fewshot_chest.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_segmentation_gets_pooled_dice_and_hd95_tables_after_dice():
    rows = [dict(task="lungs", backbone="vit", protocol="seg_unet", params="{}", seed=0, metric=m,
                 value=v, ci_low=v - 0.01, ci_high=v + 0.01)
            for m, v in (("dice", 0.91), ("dice_pooled", 0.93), ("hd95", 4.25), ("jaccard", 0.84), ("dice/heart", 0.88))]
    text = render(pd.DataFrame(rows), {}, {"lungs": "segmentation"})
    headings = [line for line in text.splitlines() if line.startswith("#") and "lungs" in line]
    assert [h.split(" — ")[1].split(" ")[0] for h in headings] == ["dice", "dice_pooled", "hd95"]
    assert "| vit | 0.910 [0.900, 0.920] |" in text and "| vit | 4.250 [4.240, 4.260] |" in text
    assert "0.840" not in text  # jaccard and per-class rows stay in results.parquet


def test_macro_auroc_names_its_classes_and_identical_seeds_keep_their_ci():
    """A class with no test positives has no AUROC: the table's heading and a line under it say which
    classes the macro covers. Two seeds that agree exactly show the CI, not '± 0.000'."""
    rows = []
    for seed in (0, 1):
        cell = f"c{seed}"
        rows += [dict(cell_id=cell, task="brain", backbone="vit", protocol="knn", params="{}", seed=seed, metric=m,
                      value=v, ci_low=lo, ci_high=hi)
                 for m, v, lo, hi in (("auroc", 0.75, 0.6, 0.9), ("auroc/glioma", 0.7, 0.5, 0.9),
                                      ("auroc/meningioma", 0.8, 0.6, 1.0), ("auroc/pituitary", float("nan"),
                                                                            float("nan"), float("nan")))]
    text = render(pd.DataFrame(rows), {"cells_done": 2, "cells_total": 2}, {"brain": "multiclass"})
    assert "## brain — auroc (macro over 2 of 3 classes)" in text
    assert "Macro AUROC covers glioma, meningioma: pituitary has no test positives (or no negatives)" in text
    assert "| vit | 0.750 [0.600, 0.900] (n=2, identical) |" in text and "± 0.000" not in text
    rows[3] = {**rows[3], "value": 0.9}  # seed 0 has pituitary: 1 of the 2 cells leaves it out
    text = render(pd.DataFrame(rows), {"cells_done": 2, "cells_total": 2}, {"brain": "multiclass"})
    assert "in 1 of 2 cells: pituitary" in text
