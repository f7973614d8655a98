"""The report's calibration and subgroup sections, from results rows shaped like results.parquet's."""

import pandas as pd

from raddist.report_trust import calibration_lines, external_lines, subgroup_lines


def _row(metric, value, lo, hi, backbone="vit", **extra):
    return {"task": "chest", "backbone": backbone, "protocol": "linear", "params": "{}", "seed": 0,
            "metric": metric, "value": value, "ci_low": lo, "ci_high": hi, **extra}


def test_calibration_section_lists_ece_and_brier_with_their_intervals():
    results = pd.DataFrame([_row("ece_mass15", 0.041, 0.02, 0.07), _row("brier", 0.180, 0.15, 0.21),
                            _row("ece_mass15", 0.120, 0.09, 0.16, backbone="cnn"), _row("auroc", 0.9, 0.8, 0.95)])
    text = "\n".join(calibration_lines(results))
    assert "## Calibration" in text and "15 equal-mass bins" in text
    assert "| vit | 0.041 [0.020, 0.070] |" in text and "| cnn | 0.120 [0.090, 0.160] |" in text
    assert "| vit | 0.180 [0.150, 0.210] |" in text
    assert calibration_lines(results[results["metric"] == "auroc"]) == []  # no ECE rows: no section


def test_subgroup_section_lists_each_group_and_the_gap_with_its_test():
    results = pd.DataFrame([
        _row("subgroup/sex=F/auroc", 0.91, 0.85, 0.96, n_patients=40),
        _row("subgroup/sex=M/auroc", 0.74, 0.61, 0.86, n_patients=12),
        _row("subgroup/sex/gap/auroc", 0.17, 0.04, 0.31, p_value=0.012, groups="F - M"),
        _row("auroc", 0.88, 0.8, 0.93)])
    text = "\n".join(subgroup_lines(results))
    assert "F 0.910 [0.850, 0.960] (n=40); M 0.740 [0.610, 0.860] (n=12)" in text
    assert "| 0.170 [0.040, 0.310] (F - M) | 0.012 |" in text
    assert subgroup_lines(results[results["metric"] == "auroc"]) == []


def test_external_section_lists_in_domain_external_and_the_drop_with_their_intervals():
    results = pd.DataFrame([
        _row("auroc", 0.91, 0.86, 0.95), _row("external/sz/auroc", 0.78, 0.70, 0.85),
        _row("external/sz/drop/auroc", 0.13, 0.04, 0.22), _row("external/sz/auroc/tb", 0.78, 0.70, 0.85),
        _row("auroc", 0.95, 0.9, 0.97, seed=1), _row("external/sz/auroc", 0.5, 0.4, 0.6, seed=1),
        _row("auroc", 0.85, 0.80, 0.90, backbone="cnn"), _row("external/sz/auroc", 0.80, 0.72, 0.87, backbone="cnn")])
    text = "\n".join(external_lines(results))
    assert "## External validation" in text and "drawn independently" in text
    assert "| vit / linear / sz | 0.910 [0.860, 0.950] | 0.780 [0.700, 0.850] | 0.130 [0.040, 0.220] |" in text
    assert "| cnn / linear / sz | 0.850 [0.800, 0.900] | 0.800 [0.720, 0.870] | — |" in text  # lowest seed; no drop row
    assert external_lines(results[~results["metric"].str.startswith("external/")]) == []
