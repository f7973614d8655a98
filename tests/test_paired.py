"""raddist.paired: Holm's step-down adjustment and the paired patient bootstrap."""

import numpy as np
import pytest

from raddist.metrics import classification_metrics
from raddist.paired import Paired, holm, paired_bootstrap
from tests.helpers import binary_data


def test_holm_hand_example():
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> raised to 0.06 (monotone)
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, np.nan, 0.01]), [0.5, np.nan, 0.02])
    np.testing.assert_allclose(holm([0.6, 0.7]), [1.0, 1.0])
    assert holm([]).shape == (0,)


def test_paired_bootstrap_a_vs_a():
    y, a, _ = binary_data(seed=4)
    r = paired_bootstrap(Paired(y, a[:, None], a[:, None], np.arange(len(y)) // 2), "auroc", n_boot=200)
    assert r["diff"] == 0 and r["ci_low"] == 0 and r["ci_high"] == 0 and r["p_value"] == 1.0


def test_paired_bootstrap_detects_better_model_and_callable_agrees():
    y, a, b = binary_data(n=300, seed=5, signal_a=2.5, signal_b=0.3)
    sa, sb = 1 / (1 + np.exp(-a[:, None])), 1 / (1 + np.exp(-b[:, None]))
    groups = np.arange(len(y)) // 3
    r = paired_bootstrap(Paired(y, sa, sb, groups), "auroc", n_boot=300, seed=1)
    assert r["diff"] > 0.2 and r["ci_low"] > 0 and r["p_value"] == pytest.approx(2 / 301)
    # the general (callable) path resamples the same patients, so it gives the same numbers
    fn = lambda labels, scores: classification_metrics("binary", labels, scores, ["x"])["auroc"]
    r2 = paired_bootstrap(Paired(y, sa, sb, groups), fn, n_boot=300, seed=1)
    for k in r:
        assert r2[k] == pytest.approx(r[k], abs=1e-12)
