"""What a cell writes beside its metrics: predictions and per-case results under pseudonyms."""

import numpy as np

from raddist.cells.outputs import cases_table, predictions_table
from raddist.plan import Cell
from raddist.privacy import pseudonym
from raddist.protocols.base import Prediction, SegCase, SegPrediction
from raddist.seg_metrics import per_case
from raddist.spec import BackboneSpec, TaskSpec

CLASSES = ["background", "organ", "lesion"]


def cell(task_type):
    task = TaskSpec(name="t", manifest="/m.parquet", type=task_type, labels=[] if task_type == "segmentation" else ["y"],
                    classes=CLASSES if task_type == "segmentation" else None)
    return Cell(id="c1", backbone=BackboneSpec(name="tiny_vit", weights="random"), task=task, protocol="knn",
                params={"ks": [5]}, seed=3, embedding_job="j")


def test_predictions_carry_the_cell_and_pseudonyms():
    pred = Prediction(np.array(["a", "b"]), np.array(["p", "p"]), np.array([[1], [0]]), np.array([[0.9], [0.2]]))
    table = predictions_table(cell("binary"), pred, "salt").to_pandas()
    assert list(table["sample_id"]) == [pseudonym("a", "salt"), pseudonym("b", "salt")]
    assert set(table["cell_id"]) == {"c1"} and set(table["task_type"]) == {"binary"} and set(table["seed"]) == {3}
    assert table["scores"].tolist()[0] == [0.9] and table["labels"].tolist()[1] == [0]


def test_cases_table_has_a_row_per_case_and_foreground_class():
    truth = np.zeros((8, 8), np.int64)
    truth[2:6, 2:6] = 1
    half = truth.copy()
    half[2:4, 2:6] = 0  # half the organ found
    cases = [SegCase("c0", "p0", truth, truth, (1.0, 1.0)), SegCase("c1", "p1", half, truth, (1.0, 1.0))]
    pred = SegPrediction(cases=cases)
    values = per_case(cases, len(CLASSES))
    table = cases_table(cell("segmentation"), pred, values, CLASSES, "salt").to_pandas()
    assert len(table) == 4 and list(table["class"]) == ["organ", "lesion"] * 2
    organ = table[table["class"] == "organ"].set_index("case_id")["dice"]
    assert organ[pseudonym("c0", "salt")] == 1.0 and abs(organ[pseudonym("c1", "salt")] - 2 / 3) < 1e-6  # MONAI computes in float32
    lesion = table[table["class"] == "lesion"]
    assert not lesion["present"].any() and lesion["dice"].isna().all()
    assert table["tp"].tolist() == [16, 0, 8, 0] and table["fn"].tolist() == [0, 0, 8, 0]
