"""DeLong's test for two correlated ROC curves, clustered by patient.

DeLong, DeLong & Clarke-Pearson (1988) compare the AUCs of two scores on the same items through the
covariance of their structural components, computed here with the midrank algorithm of Sun & Xu
(2014), O(n log n). Images of one patient are not independent (NIH repeats patients; the brain
tumour set has about 13 images each), so the components are summed per patient before the
covariance, as in Obuchowski (1997); with one image per patient this is the classic test.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm, rankdata

from raddist.metrics import group_codes


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
    (1988) estimate. A term over fewer than 2 clusters is 0, as the classic one with a single positive."""
    y = np.asarray(labels_binary).reshape(-1).astype(bool)
    aucs, v10, v01 = delong_components(y, score_matrix)
    codes, n_clusters = (np.arange(len(y)), len(y)) if groups is None else group_codes(groups)
    if len(codes) != len(y):
        raise ValueError(f"{len(codes)} groups for {len(y)} labels")

    def centred(v, cluster):  # (k, n_clusters) cluster sums minus count * AUC; how many clusters have rows
        count = np.bincount(cluster, minlength=n_clusters)
        sums = np.stack([np.bincount(cluster, weights=row, minlength=n_clusters) for row in v])
        return sums - count[None, :] * aucs[:, None], int(np.sum(count > 0))

    (a, i10), (b, i01) = centred(v10, codes[y]), centred(v01, codes[~y])
    big_m, big_n, zero = v10.shape[1], v01.shape[1], np.zeros((len(aucs), len(aucs)))
    s10 = a @ a.T * i10 / ((i10 - 1) * big_m) if i10 > 1 else zero
    s01 = b @ b.T * i01 / ((i01 - 1) * big_n) if i01 > 1 else zero
    s11 = a @ b.T * n_clusters / (n_clusters - 1) if n_clusters > 1 else zero
    return aucs, s10 / big_m + s01 / big_n + (s11 + s11.T) / (big_m * big_n)


def delong_test(labels_binary, scores_a, scores_b, alpha: float = 0.05, groups=None) -> dict:
    """Paired DeLong test of AUC(A) = AUC(B), clustered by groups (patient ids; None: every row its own cluster,
    the classic test; see :func:`delong_covariance`). Returns auc_a, auc_b, diff, var (of the diff), z, p_value
    (two-sided) and a normal-approximation (1 - alpha) CI of the diff. With zero variance (e.g. identical
    scores) z = 0 and p = 1 when diff = 0."""
    aucs, cov = delong_covariance(labels_binary, np.vstack([np.ravel(scores_a), np.ravel(scores_b)]), groups)
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    diff = float(aucs[0] - aucs[1])
    z = diff / np.sqrt(var) if var > 1e-300 else (0.0 if diff == 0 else float(np.sign(diff) * np.inf))
    half = norm.ppf(1 - alpha / 2) * np.sqrt(max(var, 0.0))
    return dict(auc_a=float(aucs[0]), auc_b=float(aucs[1]), diff=diff, var=var, z=float(z),
                p_value=float(2 * norm.sf(abs(z))), ci_low=diff - half, ci_high=diff + half)
