"""DeLong's test for two correlated ROC curves, clustered by patient.

DeLong, DeLong & Clarke-Pearson (1988) compare the AUCs of two scores on the same items through the
covariance of their structural components, computed here with the midrank algorithm of Sun & Xu
(2014), O(n log n). Images of one patient are not independent (NIH repeats patients; the brain
tumour set has about 13 images each), so the components are summed per patient before the
covariance, as in Obuchowski (1997); with one image per patient this is the classic test.

Few patients. The variance has one term per side, estimated from the patients with a positive (I10) and
the patients with a negative (I01). With one patient on a side that term cannot be estimated, and with a
handful it is so noisy that the normal reference rejects a true null far too often (calibration: 4 designs
of 3 to 8 images per patient correlated within the patient, 400 null runs each: 37-62% at 1 positive patient,
9-17% at 2, 8-11% at 3, 5-10% at 5-10, 4-8% at 10-12). So z is referred to Student's t with min(I10, I01) - 1
degrees of freedom, the usual small-sample reference of a cluster-robust variance (the normal one for large
samples): null rejection 0-4.5% at 2-20 positive patients in those designs, at most 6% in the sweep of
tests/test_delong.py. Below MIN_PATIENTS patients on either side there is no p-value at all, and the result
says why (``note``).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata, t as student_t

from raddist.metrics import ALPHA, group_codes

MIN_PATIENTS = 3  # per side: with 2, t(1) needs |z| > 12.7 to reject at 0.05 and the variance rests on 2 patients


def delong_components(labels_binary, score_matrix) -> tuple:
    """Sun & Xu (2014): AUCs (k,) and structural components V10 (k, m), V01 (k, n) of k score vectors (k, N)
    against one binary label vector, from midranks (average ranks for ties)."""
    y = np.asarray(labels_binary).reshape(-1).astype(bool)
    s = np.atleast_2d(np.asarray(score_matrix, dtype=np.float64))
    pos, neg = s[:, y], s[:, ~y]
    m, n = pos.shape[1], neg.shape[1]
    if m == 0 or n == 0:
        raise ValueError("DeLong needs both positive and negative labels")
    tz, tx, ty = (rankdata(v, method="average", axis=-1) for v in (np.concatenate([pos, neg], axis=1), pos, neg))
    aucs = (tz[:, :m].sum(1) / m - (m + 1) / 2) / n
    v10 = (tz[:, :m] - tx) / n  # per positive: share of negatives it outranks (ties 1/2)
    v01 = 1.0 - (tz[:, m:] - ty) / m  # per negative: share of positives that outrank it
    return aucs, v10, v01


def _clusters(y: np.ndarray, groups) -> tuple:
    codes, n_clusters = (np.arange(len(y)), len(y)) if groups is None else group_codes(groups)
    if len(codes) != len(y):
        raise ValueError(f"{len(codes)} groups for {len(y)} labels")
    return codes, n_clusters


def patients_per_side(labels_binary, groups=None) -> tuple:
    """(I10, I01): how many patients (groups; None: rows) have a positive, and how many a negative."""
    y = np.asarray(labels_binary).reshape(-1).astype(bool)
    codes, _ = _clusters(y, groups)
    return len(np.unique(codes[y])), len(np.unique(codes[~y]))


def _centred(v, aucs, cluster, n_clusters):
    """(k, n_clusters) cluster sums of the components minus count * AUC; how many clusters have rows."""
    count = np.bincount(cluster, minlength=n_clusters)
    sums = np.stack([np.bincount(cluster, weights=row, minlength=n_clusters) for row in v])
    return sums - count[None, :] * aucs[:, None], int(np.sum(count > 0))


def _obuchowski(a, b, i10, i01, n_clusters, big_m, big_n, outer):
    """S10 / M + S01 / N + (S11 + S11') / (M N) from centred cluster sums a (k, I), b (k, I); outer(x, y) is
    x @ y.T for a covariance matrix, or the row-wise product sum for the variances of k differences."""
    zero = outer(np.zeros_like(a), a)
    s10 = outer(a, a) * i10 / ((i10 - 1) * big_m) if i10 > 1 else zero
    s01 = outer(b, b) * i01 / ((i01 - 1) * big_n) if i01 > 1 else zero
    s11 = outer(a, b) * n_clusters / (n_clusters - 1) if n_clusters > 1 else zero
    return s10 / big_m + s01 / big_n + (s11 + s11.T) / (big_m * big_n)


def delong_covariance(labels_binary, score_matrix, groups=None) -> tuple:
    """AUCs (k,) of k score vectors and their (k, k) covariance for clustered data: Obuchowski NA (1997),
    "Nonparametric analysis of clustered ROC curve data", Biometrics 53:567-578.

    Cluster i (a patient) has m_i positives X_ij and n_i negatives Y_ik; M = sum m_i, N = sum n_i; I10 clusters
    have a positive, I01 a negative, I in all. With Sun & Xu's structural components summed per cluster,
    V10_i = sum_j V10(X_ij), V01_i = sum_k V01(Y_ik), centred: a_i = V10_i - m_i AUC, b_i = V01_i - n_i AUC,

        S10 = I10 / ((I10 - 1) M) sum_i a_i a_i'      S01 = I01 / ((I01 - 1) N) sum_i b_i b_i'
        S11 = I / (I - 1) sum_i a_i b_i'              cov = S10 / M + S01 / N + (S11 + S11') / (M N)

    (a cluster without positives has a_i = 0, one without negatives b_i = 0). groups=None makes every row its
    own cluster: then S11 = 0 and S10, S01 are the sample covariances of V10, V01, the classic DeLong et al.
    (1988) estimate. A term over fewer than 2 clusters is 0 (:func:`delong_test` gives no p-value then)."""
    y = np.asarray(labels_binary).reshape(-1).astype(bool)
    aucs, v10, v01 = delong_components(y, score_matrix)
    codes, n_clusters = _clusters(y, groups)
    (a, i10), (b, i01) = (_centred(v, aucs, c, n_clusters) for v, c in ((v10, codes[y]), (v01, codes[~y])))
    return aucs, _obuchowski(a, b, i10, i01, n_clusters, v10.shape[1], v01.shape[1], lambda x, z: x @ z.T)


def delong_tests(labels_binary, scores_a, scores_b, alpha: float = ALPHA, groups=None) -> dict:
    """Paired DeLong tests of AUC(A_r) = AUC(B_r) for r score pairs (scores_a, scores_b: (r, N) or (N,)) on one
    label vector, clustered by groups; vectorised over r (a simulation's runs). Returns arrays (r,) auc_a,
    auc_b, diff, var (of the diff, Obuchowski's formula on the difference's components), z, p_value and the
    (1 - alpha) CI of the diff, both from Student's t with df = min(I10, I01) - 1; and scalars df and note.
    p_value and the CI are NaN when a side has fewer than MIN_PATIENTS patients, and note says so ('' if not).
    With zero variance (e.g. identical scores) z = 0 and p = 1 when diff = 0."""
    y = np.asarray(labels_binary).reshape(-1).astype(bool)
    sa, sb = np.atleast_2d(np.asarray(scores_a, np.float64)), np.atleast_2d(np.asarray(scores_b, np.float64))
    aucs, v10, v01 = delong_components(y, np.vstack([sa, sb]))
    r = len(sa)
    diff, d10, d01 = aucs[:r] - aucs[r:], v10[:r] - v10[r:], v01[:r] - v01[r:]
    codes, n_clusters = _clusters(y, groups)
    (a, i10), (b, i01) = (_centred(v, diff, c, n_clusters) for v, c in ((d10, codes[y]), (d01, codes[~y])))
    var = np.diagonal(_obuchowski(a, b, i10, i01, n_clusters, v10.shape[1], v01.shape[1],
                                  lambda x, z: np.diag(np.einsum("ki,ki->k", x, z)))).copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(var > 1e-300, diff / np.sqrt(np.maximum(var, 1e-300)), np.where(diff == 0, 0.0, np.sign(diff) * np.inf))
    df = min(i10, i01) - 1
    note = ""
    if min(i10, i01) < MIN_PATIENTS:
        note = (f"no p-value: {i10} patient(s) with positives and {i01} with negatives; DeLong needs at least "
                f"{MIN_PATIENTS} on each side")
    p = 2 * student_t.sf(np.abs(z), max(df, 1)) if not note else np.full(r, np.nan)
    half = student_t.ppf(1 - alpha / 2, max(df, 1)) * np.sqrt(np.maximum(var, 0.0)) if not note else np.nan
    return dict(auc_a=aucs[:r], auc_b=aucs[r:], diff=diff, var=var, z=z, p_value=p, ci_low=diff - half,
                ci_high=diff + half, df=df, note=note)


def delong_test(labels_binary, scores_a, scores_b, alpha: float = ALPHA, groups=None) -> dict:
    """Paired DeLong test of AUC(A) = AUC(B), clustered by groups (patient ids; None: every row its own cluster,
    the classic test; see :func:`delong_covariance`). Returns auc_a, auc_b, diff, var (of the diff), z, p_value
    (two-sided), a (1 - alpha) CI of the diff, df and note: see :func:`delong_tests`."""
    out = delong_tests(labels_binary, np.ravel(scores_a), np.ravel(scores_b), alpha, groups)
    return {k: (float(v[0]) if isinstance(v, np.ndarray) else v) for k, v in out.items()}
