"""Statistics of the coordinator study.

Design: several pretraining *conditions* are each fine-tuned with ``K`` paired *seeds* and
evaluated on ONE fixed external test set (the same cases for every condition and seed). Two
levels of comparison follow from that design:

* case level, one seed (or a seed ensemble): the two score vectors are paired by case, so the
  correlated-ROC test of DeLong et al. (:func:`delong_paired`) and a label-stratified paired
  bootstrap (:func:`paired_bootstrap_ap`) apply;
* seed level: the per-seed metric differences between two conditions are paired by seed
  (:func:`seed_level_test`); several comparisons are corrected with :func:`holm`.

Conventions: labels ``y`` are binary (``1`` = positive, e.g. csPCa), a higher score means more
likely positive, and every difference is ``condition 1 - condition 2``. Only numpy, scipy and
scikit-learn are used (no torch).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats as _st
from sklearn.metrics import average_precision_score, roc_auc_score

__all__ = [
    "BootstrapResult",
    "DeLongResult",
    "SeedTestResult",
    "auc",
    "average_precision",
    "delong_covariance",
    "delong_paired",
    "delong_variance",
    "holm",
    "paired_bootstrap",
    "paired_bootstrap_ap",
    "seed_level_test",
    "sens_spec_at",
    "summarize",
    "threshold_for_sensitivity",
]

Metric = Callable[[NDArray[np.int_], NDArray[np.float64]], float]

# Exact sign-flip enumeration up to this many seeds (2**16 = 65 536 flips).
EXACT_PERMUTATION_MAX_N = 16


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


def _as_1d(x: ArrayLike, name: str) -> NDArray[np.generic]:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {arr.shape}")
    return arr


def _labels(y: ArrayLike, name: str = "y") -> NDArray[np.int_]:
    """Validate binary labels with both classes present; return them as ``int`` 0/1."""
    arr = _as_1d(y, name)
    if arr.size == 0:
        raise ValueError(f"{name}: expected a non-empty label array, got 0 labels")
    if arr.dtype == bool:
        out = arr.astype(int)
    else:
        try:
            num = arr.astype(float)
        except (TypeError, ValueError):
            raise ValueError(
                f"{name}: expected binary labels in {{0, 1}}, got dtype {arr.dtype}"
            ) from None
        bad = np.unique(num[~np.isin(num, (0.0, 1.0))])
        if bad.size:
            raise ValueError(
                f"{name}: expected binary labels in {{0, 1}}, got values {bad[:5].tolist()}"
            )
        out = num.astype(int)
    n_pos = int(out.sum())
    if n_pos == 0 or n_pos == out.size:
        present = 1 if n_pos else 0
        raise ValueError(
            f"{name}: expected both classes (0 and 1) present, got only class {present} "
            f"({out.size} labels)"
        )
    return out


def _scores(s: ArrayLike, n: int, name: str = "s", y_name: str = "y") -> NDArray[np.float64]:
    """Validate a finite 1-D score vector of length ``n``; return it as ``float64``."""
    arr = _as_1d(s, name)
    try:
        out = arr.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected numeric scores, got dtype {arr.dtype}") from None
    if out.size != n:
        raise ValueError(
            f"{name}: expected the same length as {y_name} ({n}), got length {out.size}"
        )
    n_bad = int((~np.isfinite(out)).sum())
    if n_bad:
        raise ValueError(f"{name}: expected finite scores, got {n_bad} NaN/inf value(s)")
    return out


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: expected a value in (0, 1), got {confidence}")


# --------------------------------------------------------------------------------------------
# point metrics
# --------------------------------------------------------------------------------------------


def auc(y: ArrayLike, s: ArrayLike) -> float:
    r"""Area under the ROC curve.

    .. math:: \mathrm{AUC} = \frac{1}{mn}\sum_{i=1}^{m}\sum_{j=1}^{n}\psi(X_i, Y_j),\qquad
              \psi(x, y) = 1,\ \tfrac12,\ 0 \ \text{for}\ x > y,\ x = y,\ x < y,

    with ``X`` the ``m`` positive and ``Y`` the ``n`` negative scores (Mann-Whitney form).

    Parameters
    ----------
    y : array_like, shape (N,)
        Binary labels (0/1 or bool); both classes must be present.
    s : array_like, shape (N,)
        Finite scores, higher = more likely positive.

    Returns
    -------
    float
        ``sklearn.metrics.roc_auc_score(y, s)``.

    Raises
    ------
    ValueError
        If ``y`` is not binary with both classes, or ``s`` is not finite or not of ``y``'s length.
    """
    yy = _labels(y)
    ss = _scores(s, yy.size)
    return float(roc_auc_score(yy, ss))


def average_precision(y: ArrayLike, s: ArrayLike) -> float:
    r"""Average precision (area under the precision-recall curve, step-wise).

    .. math:: \mathrm{AP} = \sum_k (R_k - R_{k-1})\,P_k

    over the distinct score thresholds in decreasing order (``R_0 = 0``), with ``P_k`` and
    ``R_k`` the precision and recall of the rule ``s >= t_k``. Tied scores form one threshold.

    Parameters
    ----------
    y : array_like, shape (N,)
        Binary labels (0/1 or bool); both classes must be present.
    s : array_like, shape (N,)
        Finite scores, higher = more likely positive.

    Returns
    -------
    float
        ``sklearn.metrics.average_precision_score(y, s)``.

    Raises
    ------
    ValueError
        As :func:`auc`.
    """
    yy = _labels(y)
    ss = _scores(s, yy.size)
    return float(average_precision_score(yy, ss))


def sens_spec_at(y: ArrayLike, s: ArrayLike, threshold: float) -> tuple[float, float]:
    r"""Sensitivity and specificity of the rule "positive if ``s >= threshold``".

    .. math:: \mathrm{sens} = \frac{\#\{i: y_i = 1,\ s_i \ge t\}}{\#\{y = 1\}},\qquad
              \mathrm{spec} = \frac{\#\{i: y_i = 0,\ s_i < t\}}{\#\{y = 0\}}

    Parameters
    ----------
    y : array_like, shape (N,)
        Binary labels; both classes must be present.
    s : array_like, shape (N,)
        Finite scores.
    threshold : float
        Operating point ``t``, typically from :func:`threshold_for_sensitivity` on validation
        data (never chosen on the test set it is applied to).

    Returns
    -------
    (float, float)
        ``(sensitivity, specificity)``.
    """
    yy = _labels(y)
    ss = _scores(s, yy.size)
    t = float(threshold)
    if math.isnan(t):
        raise ValueError(f"threshold: expected a number, got {threshold}")
    pred = ss >= t
    pos = yy == 1
    sens = float(pred[pos].mean())
    spec = float((~pred[~pos]).mean())
    return sens, spec


def threshold_for_sensitivity(y_val: ArrayLike, s_val: ArrayLike, target: float = 0.9) -> float:
    r"""Operating point chosen on VALIDATION data for a target sensitivity.

    Returns the largest threshold ``t`` whose rule ``s >= t`` reaches sensitivity ``>= target``
    on ``(y_val, s_val)``. As specificity can only fall when ``t`` falls, this is also the
    threshold of highest validation specificity among those meeting the target. With ``P``
    validation positives it is the ``k``-th largest positive score,
    :math:`k = \lceil \mathrm{target}\cdot P \rceil`. The threshold is then applied unchanged to
    the external test set with :func:`sens_spec_at`, where the achieved sensitivity may differ
    from the target.

    Parameters
    ----------
    y_val : array_like, shape (N,)
        Validation labels; both classes must be present.
    s_val : array_like, shape (N,)
        Validation scores.
    target : float, default 0.9
        Target sensitivity in ``(0, 1]``.

    Returns
    -------
    float
        The threshold ``t``.
    """
    yy = _labels(y_val, "y_val")
    ss = _scores(s_val, yy.size, "s_val", "y_val")
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target: expected a sensitivity in (0, 1], got {target}")
    pos = np.sort(ss[yy == 1])[::-1]
    # The small slack keeps e.g. 0.9 * 10 = 9.000000000000002 from rounding up to 10.
    k = max(1, math.ceil(target * pos.size - 1e-9))
    return float(pos[k - 1])


# --------------------------------------------------------------------------------------------
# DeLong
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeLongResult:
    """Paired DeLong comparison of two ROC curves on the same cases (``diff = auc1 - auc2``).

    ``ci_low``/``ci_high`` bound the confidence interval of ``diff`` (Wald, not clipped).
    """

    auc1: float
    auc2: float
    diff: float
    se: float
    z: float
    p_value: float
    ci_low: float
    ci_high: float


def _midrank_components(
    y: NDArray[np.int_], scores: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    r"""AUCs and structural components by the midrank algorithm of Sun & Xu (2014).

    ``scores`` has shape ``(k, N)``. With ``X`` the ``m`` positive and ``Y`` the ``n`` negative
    scores of one curve, ``T_X``, ``T_Y``, ``T_Z`` the midranks (ties get the average rank)
    within ``X``, within ``Y`` and within the pooled ``Z = (X, Y)``:

    .. math:: V_{10}(X_i) = \frac{T_Z(X_i) - T_X(X_i)}{n},\qquad
              V_{01}(Y_j) = 1 - \frac{T_Z(Y_j) - T_Y(Y_j)}{m},\qquad
              \mathrm{AUC} = \overline{V_{10}} = \overline{V_{01}},

    which equal the placement values :math:`\frac1n\sum_j\psi(X_i, Y_j)` and
    :math:`\frac1m\sum_i\psi(X_i, Y_j)` in ``O(N log N)``.
    """
    pos = y == 1
    x = scores[:, pos]
    yneg = scores[:, ~pos]
    m, n = x.shape[1], yneg.shape[1]
    tx = _st.rankdata(x, axis=1)
    ty = _st.rankdata(yneg, axis=1)
    tz = _st.rankdata(np.concatenate([x, yneg], axis=1), axis=1)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    aucs = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    return aucs, v10, v01


def delong_covariance(
    y: ArrayLike, scores: Sequence[ArrayLike]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    r"""AUCs of ``k`` correlated ROC curves and their DeLong covariance matrix.

    With structural components ``V10`` (one row per curve, one column per positive) and ``V01``
    (per negative), see :func:`delong_paired`:

    .. math:: S = \frac{S_{10}}{m} + \frac{S_{01}}{n},\qquad
              (S_{10})_{rs} = \frac{1}{m-1}\sum_i (V_{10}^r(X_i) - \mathrm{AUC}_r)
                                               (V_{10}^s(X_i) - \mathrm{AUC}_s),

    and likewise ``S01`` over the ``n`` negatives with ``1/(n-1)``.

    Parameters
    ----------
    y : array_like, shape (N,)
        Binary labels with at least two positives and two negatives.
    scores : sequence of array_like, each shape (N,)
        The ``k`` score vectors, all on the same cases as ``y``.

    Returns
    -------
    aucs : ndarray, shape (k,)
    cov : ndarray, shape (k, k)
    """
    yy = _labels(y)
    if len(scores) == 0:
        raise ValueError("scores: expected at least one score vector, got 0")
    mat = np.stack(
        [_scores(s, yy.size, f"scores[{i}]") for i, s in enumerate(scores)], axis=0
    ).astype(np.float64)
    m, n = int(yy.sum()), int(yy.size - yy.sum())
    if m < 2 or n < 2:
        raise ValueError(
            f"y: expected at least 2 positives and 2 negatives for the DeLong variance, "
            f"got {m} positive(s) and {n} negative(s)"
        )
    aucs, v10, v01 = _midrank_components(yy, mat)
    s10 = np.atleast_2d(np.cov(v10, ddof=1))
    s01 = np.atleast_2d(np.cov(v01, ddof=1))
    return aucs, s10 / m + s01 / n


def delong_variance(y: ArrayLike, s: ArrayLike) -> float:
    r"""DeLong variance of one empirical AUC: :math:`S_{10}/m + S_{01}/n` (see
    :func:`delong_covariance`), i.e. the sample variances (``ddof=1``) of the placement values of
    the ``m`` positives and ``n`` negatives, each divided by its class size.

    Parameters
    ----------
    y : array_like, shape (N,)
        Binary labels with at least two positives and two negatives.
    s : array_like, shape (N,)
        Finite scores.

    Returns
    -------
    float
        The estimated variance of the AUC.
    """
    _, cov = delong_covariance(y, [s])
    return float(cov[0, 0])


def delong_paired(
    y: ArrayLike, s1: ArrayLike, s2: ArrayLike, confidence: float = 0.95
) -> DeLongResult:
    r"""DeLong, DeLong & Clarke-Pearson (1988) test of two correlated AUCs on the same cases.

    Computed with the fast midrank algorithm of Sun & Xu (2014), ``O(N log N)``, exact with
    ties. For the difference :math:`d = \mathrm{AUC}_1 - \mathrm{AUC}_2` and the ``2x2`` DeLong
    covariance ``S`` (:func:`delong_covariance`):

    .. math:: \mathrm{se} = \sqrt{S_{11} + S_{22} - 2S_{12}},\qquad z = d / \mathrm{se},\qquad
              p = 2\,(1 - \Phi(|z|)),\qquad \mathrm{CI} = d \pm z_{1-\alpha/2}\,\mathrm{se}.

    Degenerate case ``se == 0`` (numerically: the variance below ``64 eps (S11 + S22)``): if
    ``d == 0`` (e.g. identical score vectors) then ``z = 0``, ``p = 1``; otherwise
    ``z = +-inf``, ``p = 0``; the CI collapses to ``(d, d)``. No division by zero is performed.

    Parameters
    ----------
    y : array_like, shape (N,)
        Binary labels with at least two positives and two negatives.
    s1, s2 : array_like, shape (N,)
        Scores of the two classifiers on the same cases.
    confidence : float, default 0.95
        Level of the Wald interval of ``d``.

    Returns
    -------
    DeLongResult
    """
    _check_confidence(confidence)
    yy = _labels(y)
    a = _scores(s1, yy.size, "s1")
    b = _scores(s2, yy.size, "s2")
    aucs, cov = delong_covariance(yy, [a, b])
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    tol = 64.0 * np.finfo(float).eps * float(cov[0, 0] + cov[1, 1])
    if var <= tol:
        se = 0.0
        if diff == 0.0:
            z, p = 0.0, 1.0
        else:
            z, p = math.copysign(math.inf, diff), 0.0
        lo = hi = diff
    else:
        se = math.sqrt(var)
        z = diff / se
        p = float(2.0 * _st.norm.sf(abs(z)))
        half = float(_st.norm.ppf(0.5 + confidence / 2.0)) * se
        lo, hi = diff - half, diff + half
    return DeLongResult(
        auc1=float(aucs[0]),
        auc2=float(aucs[1]),
        diff=diff,
        se=se,
        z=float(z),
        p_value=min(1.0, float(p)),
        ci_low=lo,
        ci_high=hi,
    )


# --------------------------------------------------------------------------------------------
# paired bootstrap
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BootstrapResult:
    """Label-stratified paired bootstrap of ``metric(y, s1) - metric(y, s2)``."""

    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    n_boot: int


def _batch_auc(scores: NDArray[np.float64], m: int) -> NDArray[np.float64]:
    """AUC of each row of ``scores`` whose first ``m`` columns are the positives (midranks)."""
    n = scores.shape[1] - m
    ranks = _st.rankdata(scores, axis=1)
    return (ranks[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)


def _batch_average_precision(scores: NDArray[np.float64], m: int) -> NDArray[np.float64]:
    """Average precision of each row of ``scores`` whose first ``m`` columns are the positives.

    Same definition as sklearn: sum over distinct thresholds of ``(R_k - R_{k-1}) P_k``. After a
    descending sort, only the last position of each run of tied scores is a threshold.
    """
    b, total = scores.shape
    labels = np.zeros(total, dtype=np.int64)
    labels[:m] = 1
    order = np.argsort(-scores, axis=1, kind="stable")
    s_sorted = np.take_along_axis(scores, order, axis=1)
    tp = np.cumsum(labels[order], axis=1)
    precision = tp / np.arange(1, total + 1)
    is_end = np.ones((b, total), dtype=bool)
    is_end[:, :-1] = s_sorted[:, 1:] != s_sorted[:, :-1]
    tp_end = np.where(is_end, tp, 0)
    prev = np.zeros_like(tp)
    prev[:, 1:] = np.maximum.accumulate(tp_end, axis=1)[:, :-1]
    return np.where(is_end, (tp - prev) * precision, 0.0).sum(axis=1) / m


# Metrics of this module that have an exact vectorised batch form (first m columns positive).
_BATCH: dict[Callable[..., float], Callable[[NDArray[np.float64], int], NDArray[np.float64]]] = {
    average_precision: _batch_average_precision,
    auc: _batch_auc,
}


def paired_bootstrap(
    y: ArrayLike,
    s1: ArrayLike,
    s2: ArrayLike,
    metric: Metric = average_precision,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> BootstrapResult:
    r"""Label-stratified paired bootstrap of a metric difference on the same cases.

    Each replicate ``b`` draws, with replacement, ``m`` of the ``m`` positives and ``n`` of the
    ``n`` negatives (class counts preserved, so every replicate has both classes), and applies
    the SAME case indices to both score vectors:
    :math:`d_b = \mathrm{metric}(y^*_b, s^*_{1b}) - \mathrm{metric}(y^*_b, s^*_{2b})`.

    * ``diff``: the observed difference on the original data;
    * CI: percentile interval, the ``(1 -+ confidence)/2`` quantiles of ``d_b``;
    * p (two-sided, percentile-bootstrap inversion):
      :math:`p = \min\{1, \max(2\min(\hat P(d_b \le 0), \hat P(d_b \ge 0)), 1/(B+1))\}`.
      Identical score vectors give ``d_b = 0`` for all ``b`` and hence ``p = 1``.

    The default metric (:func:`average_precision`) and :func:`auc` are evaluated for all
    replicates at once in fixed-size chunks of vectorised numpy; any other
    ``metric(y, s) -> float`` is called once per replicate (in each replicate the first ``m``
    cases are the positives). Results depend only on the inputs and ``seed``.

    Parameters
    ----------
    y : array_like, shape (N,)
        Binary labels; both classes must be present.
    s1, s2 : array_like, shape (N,)
        Scores of the two classifiers on the same cases.
    metric : callable, default :func:`average_precision`
        ``metric(y, s) -> float``.
    n_boot : int, default 2000
        Number of bootstrap replicates ``B``.
    seed : int, default 0
        Seed of ``numpy.random.default_rng``.
    confidence : float, default 0.95
        Level of the percentile interval.

    Returns
    -------
    BootstrapResult
    """
    _check_confidence(confidence)
    if int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"n_boot: expected a positive integer, got {n_boot}")
    n_boot = int(n_boot)
    yy = _labels(y)
    a = _scores(s1, yy.size, "s1")
    b = _scores(s2, yy.size, "s2")
    pos_idx = np.flatnonzero(yy == 1)
    neg_idx = np.flatnonzero(yy == 0)
    m, n = pos_idx.size, neg_idx.size
    total = m + n
    observed = float(metric(yy, a)) - float(metric(yy, b))

    rng = np.random.default_rng(seed)
    batch = _BATCH.get(metric)
    y_star = np.concatenate([np.ones(m, dtype=int), np.zeros(n, dtype=int)])
    chunk = max(1, (1 << 20) // total)
    diffs = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, chunk):
        rows = min(chunk, n_boot - start)
        idx = np.concatenate(
            [
                pos_idx[rng.integers(0, m, size=(rows, m))],
                neg_idx[rng.integers(0, n, size=(rows, n))],
            ],
            axis=1,
        )
        if batch is not None:
            d = batch(a[idx], m) - batch(b[idx], m)
        else:
            d = np.array([float(metric(y_star, a[r])) - float(metric(y_star, b[r])) for r in idx])
        diffs[start : start + rows] = d

    lo, hi = np.quantile(diffs, [(1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0])
    p = 2.0 * min(float(np.mean(diffs <= 0.0)), float(np.mean(diffs >= 0.0)))
    p = min(1.0, max(p, 1.0 / (n_boot + 1)))
    return BootstrapResult(
        diff=observed, ci_low=float(lo), ci_high=float(hi), p_value=p, n_boot=n_boot
    )


def paired_bootstrap_ap(
    y: ArrayLike,
    s1: ArrayLike,
    s2: ArrayLike,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> BootstrapResult:
    """:func:`paired_bootstrap` with ``metric=average_precision`` (AP difference ``s1 - s2``)."""
    return paired_bootstrap(
        y, s1, s2, metric=average_precision, n_boot=n_boot, seed=seed, confidence=confidence
    )


# --------------------------------------------------------------------------------------------
# seed level
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeedTestResult:
    """Seed-level paired test on per-seed differences ``d_k = metric_1(seed k) - metric_2(seed
    k)``. ``n_better`` counts seeds with ``d_k > 0``; the CI is the t-interval of the mean."""

    mean_diff: float
    n_better: int
    n: int
    p_value: float
    ci_low: float
    ci_high: float
    method: str


def _sign_flip_p(d: NDArray[np.float64], n_permutations: int, seed: int) -> float:
    """Two-sided sign-flip p-value of ``|sum d|`` (exact for ``n <= 16``, else Monte Carlo)."""
    n = d.size
    observed = abs(float(d.sum()))
    tol = 1e-12 * max(1.0, float(np.abs(d).sum()))
    if n <= EXACT_PERMUTATION_MAX_N:
        codes = np.arange(1 << n, dtype=np.int64)[:, None]
        signs = 1.0 - 2.0 * ((codes >> np.arange(n)) & 1)
        stats = np.abs(signs @ d)
        return float(np.mean(stats >= observed - tol))
    rng = np.random.default_rng(seed)
    hits = 0
    chunk = 4096
    for start in range(0, n_permutations, chunk):
        rows = min(chunk, n_permutations - start)
        signs = rng.choice(np.array([-1.0, 1.0]), size=(rows, n))
        hits += int(np.sum(np.abs(signs @ d) >= observed - tol))
    return (hits + 1.0) / (n_permutations + 1.0)


def seed_level_test(
    diffs: ArrayLike,
    method: Literal["wilcoxon", "permutation"] = "wilcoxon",
    confidence: float = 0.95,
    n_permutations: int = 10000,
    seed: int = 0,
) -> SeedTestResult:
    r"""Paired test of two conditions over seeds, on per-seed metric differences ``d_k``.

    * ``"wilcoxon"``: two-sided Wilcoxon signed-rank test, ``scipy.stats.wilcoxon(d)`` with its
      defaults (zero differences dropped, exact null distribution for small ``n`` without
      ties/zeros, else normal approximation). If every ``d_k`` is 0 the result is ``p = 1``
      (defined here, no scipy call).
    * ``"permutation"``: two-sided sign-flip test of :math:`T = |\sum_k d_k|` under the null
      of symmetry about 0: :math:`p = \#\{\varepsilon \in \{\pm1\}^n : |\sum_k \varepsilon_k
      d_k| \ge T\} / 2^n`, enumerating all ``2^n`` flips for ``n <= 16`` (so ``p >= 2^{1-n}``
      when ``T > 0``; e.g. 8 positive ``d_k`` give ``p = 2/256``), else ``n_permutations``
      random flips with :math:`p = (1 + \text{hits}) / (1 + \text{n\_permutations})`.

    CI (both methods): the Student t-interval of the mean difference,
    :math:`\bar d \pm t_{n-1,\,1-\alpha/2}\, \mathrm{sd}(d)/\sqrt n` (``sd`` with ``ddof=1``);
    ``(nan, nan)`` for ``n = 1``, ``(\bar d, \bar d)`` when all ``d_k`` are equal.

    Parameters
    ----------
    diffs : array_like, shape (n,)
        Per-seed differences (condition 1 - condition 2), finite, ``n >= 1``.
    method : {"wilcoxon", "permutation"}, default "wilcoxon"
    confidence : float, default 0.95
        Level of the t-interval.
    n_permutations : int, default 10000
        Monte Carlo flips when ``n > 16``.
    seed : int, default 0
        Seed of the Monte Carlo flips.

    Returns
    -------
    SeedTestResult
    """
    _check_confidence(confidence)
    d = _as_1d(diffs, "diffs").astype(np.float64)
    if d.size == 0:
        raise ValueError("diffs: expected at least one per-seed difference, got 0")
    n_bad = int((~np.isfinite(d)).sum())
    if n_bad:
        raise ValueError(f"diffs: expected finite differences, got {n_bad} NaN/inf value(s)")
    n = int(d.size)
    mean, sd = summarize(d)

    if method == "wilcoxon":
        p = 1.0 if np.all(d == 0.0) else float(_st.wilcoxon(d, alternative="two-sided").pvalue)
    elif method == "permutation":
        if n_permutations < 1:
            raise ValueError(f"n_permutations: expected a positive integer, got {n_permutations}")
        p = _sign_flip_p(d, int(n_permutations), seed)
    else:
        raise ValueError(f"method: expected 'wilcoxon' or 'permutation', got {method!r}")

    if n < 2:
        lo = hi = math.nan
    elif sd == 0.0:
        lo = hi = mean
    else:
        half = float(_st.t.ppf(0.5 + confidence / 2.0, df=n - 1)) * sd / math.sqrt(n)
        lo, hi = mean - half, mean + half
    return SeedTestResult(
        mean_diff=mean,
        n_better=int(np.sum(d > 0.0)),
        n=n,
        p_value=min(1.0, p),
        ci_low=lo,
        ci_high=hi,
        method=method,
    )


# --------------------------------------------------------------------------------------------
# multiplicity and summaries
# --------------------------------------------------------------------------------------------


def holm(p_values: Sequence[float] | ArrayLike) -> list[float]:
    r"""Holm-Bonferroni adjusted p-values, in the order of the input.

    With the ``M`` p-values sorted ascending, :math:`p_{(1)} \le \dots \le p_{(M)}`:

    .. math:: \tilde p_{(k)} = \min\Bigl(1,\ \max_{j \le k} (M - j + 1)\, p_{(j)}\Bigr),

    monotone in ``k`` and capped at 1; rejecting where :math:`\tilde p \le \alpha` controls the
    family-wise error rate at ``alpha``.

    Parameters
    ----------
    p_values : sequence of float
        Raw p-values in ``[0, 1]``.

    Returns
    -------
    list of float
    """
    p = _as_1d(np.asarray(p_values, dtype=np.float64), "p_values")
    if p.size == 0:
        return []
    if not np.all(np.isfinite(p)) or np.any((p < 0.0) | (p > 1.0)):
        raise ValueError(f"p_values: expected values in [0, 1], got {p.tolist()}")
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = (m - np.arange(m)) * p[order]
    adjusted_sorted = np.minimum(1.0, np.maximum.accumulate(scaled))
    out = np.empty(m, dtype=np.float64)
    out[order] = adjusted_sorted
    return [float(v) for v in out]


def summarize(values: ArrayLike) -> tuple[float, float]:
    r"""Mean and sample standard deviation (``ddof=1``) across seeds.

    .. math:: \bar x = \frac1n\sum_k x_k,\qquad
              \mathrm{sd} = \sqrt{\tfrac{1}{n-1}\sum_k (x_k - \bar x)^2}

    Parameters
    ----------
    values : array_like, shape (n,)
        Finite values, ``n >= 1``.

    Returns
    -------
    (float, float)
        ``(mean, sd)``; ``sd`` is ``nan`` for ``n = 1`` (undefined with ``ddof=1``).
    """
    x = _as_1d(values, "values").astype(np.float64)
    if x.size == 0:
        raise ValueError("values: expected at least one value, got 0")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"values: expected finite values, got {x.tolist()}")
    mean = float(x.mean())
    sd = math.nan if x.size == 1 else float(x.std(ddof=1))
    return mean, sd
