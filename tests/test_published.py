"""Published numbers beside raddist's: the shipped table, a user's planted CSV through
`raddist report OUTPUT --published FILE`, and the one-line errors of a bad table."""

import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raddist import cli
from raddist.published import PublishedError, load, read_csv, shipped
from raddist.report_write import write_report


def test_shipped_table_has_the_reference_figures_with_citations():
    assert "baharoon2023-fewshot.csv" in shipped()
    table = load()
    base = table[table["table"] == "baharoon2023-fewshot.csv"]
    assert len(base) == 48 and base["source"].str.contains("MohammedSB/DINOv2ForRadiology@4544bee").all()
    row = base[(base.task == "nih_chestxray14") & (base.backbone == "dinov2_vitl14") & (base.shots == "8")].iloc[0]
    assert row["value"] == 0.584 and row["metric"] == "auroc" and row["protocol"] == "fewshot"


def _run(tmp_path):
    """A finished run's files: results.parquet (linear + 2-shot few-shot on nih_chestxray14), summary.json
    and a report written once without the user's table."""
    rows = [dict(cell_id=f"c{b}", task="nih_chestxray14", task_type="multilabel", backbone=b, protocol="linear",
                 params="{}", seed=0, metric="auroc", value=v, ci_low=v - 0.02, ci_high=v + 0.02)
            for b, v in (("dinov2_vitl14", 0.80), ("resnet152", 0.70))]
    rows += [dict(cell_id=f"f{d}", task="nih_chestxray14", task_type="multilabel", backbone="dinov2_vitl14",
                  protocol="fewshot", params=json.dumps({"shots": 2, "draw": d, "probe": "linear"}), seed=0,
                  metric="auroc", value=0.52 + 0.02 * d, ci_low=0.48 + 0.02 * d, ci_high=0.56 + 0.02 * d)
             for d in range(3)]  # mean 0.54, mean CI [0.50, 0.58]
    out = tmp_path / "out"
    out.mkdir()
    table = pa.Table.from_pandas(pd.DataFrame(rows))
    pq.write_table(table, out / "results.parquet")
    (out / "summary.json").write_text(json.dumps({"cells_done": 5, "cells_total": 5, "mode": "raddist"}))
    write_report(str(out), {"results": table, "cells": []}, {"cells_done": 5, "cells_total": 5})
    return out


def test_planted_published_file_is_compared_in_report_md_and_html(tmp_path, capsys):
    out = _run(tmp_path)
    before = (out / "report.md").read_text()
    # the shipped table's DINOv2-L 2-shot NIH value (0.528) lies inside [0.500, 0.580]
    assert "| nih_chestxray14 / dinov2_vitl14 / fewshot (linear) / 2 / auroc | 0.528 | 0.540 [0.500, 0.580] | yes |" \
        in before
    assert "48 published values (baharoon2023-fewshot.csv); 1 match" in before
    planted = tmp_path / "mine.csv"
    planted.write_text("task,backbone,protocol,metric,value,source\n"
                       "nih_chestxray14,dinov2_vitl14,linear,auroc,0.81,Leaderboard X (2025)\n"
                       "nih_chestxray14,resnet152,linear,auroc,0.65,Leaderboard X (2025)\n"
                       "chexpert,resnet152,linear,auroc,0.9,Leaderboard X (2025)\n")
    assert cli.main(["report", str(out), "--published", str(planted)]) == 0
    printed = capsys.readouterr().out
    assert "| nih_chestxray14 / dinov2_vitl14 / linear / — / auroc | 0.810 | 0.800 [0.780, 0.820] | yes | " \
           "Leaderboard X (2025) |" in printed
    assert "| nih_chestxray14 / resnet152 / linear / — / auroc | 0.650 | 0.700 [0.680, 0.720] | no |" in printed
    assert "51 published values (baharoon2023-fewshot.csv, mine.csv); 3 match" in printed  # chexpert: no cell
    page = (out / "report.html").read_text()
    assert "Leaderboard X (2025)" in page and "<td>0.650</td>" in page and "report.md" not in page.split("<h2")[0]


@pytest.mark.parametrize("text,message", [
    ("task,backbone,protocol,metric,value\nt,b,linear,auroc,0.5\n", "no column source"),
    ("dataset,backbone,protocol,metric,value,source\nt,b,linear,auroc,0.5\nt,b,knn,auroc,high,x\n",
     "row 2, field value: 'high' is not a number"),
])
def test_bad_published_file_is_one_line_naming_file_row_field(tmp_path, text, message):
    bad = tmp_path / "bad.csv"
    bad.write_text(text)
    with pytest.raises(PublishedError) as e:
        read_csv(str(bad))
    assert message in str(e.value) and "bad.csv" in str(e.value) and "\n" not in str(e.value)
