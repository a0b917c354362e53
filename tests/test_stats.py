"""Statistics of the coordinator study: metrics, DeLong, paired bootstrap, seed-level tests,
Holm and summaries. Reference values are computed independently inside the tests."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as st
from sklearn.metrics import average_precision_score, roc_auc_score

from coordinator.study import stats as S

# --------------------------------------------------------------------------------------------
# helpers (independent reference implementations)
# --------------------------------------------------------------------------------------------


def _data(
    seed: int, n: int = 120, shift: float = 1.0, decimals: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels and two correlated score vectors; ``decimals`` rounds the scores to create ties."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y[:2], y[2:4] = 1, 0  # at least two of each class
    common = rng.normal(size=n)
    s1 = shift * y + common + 0.7 * rng.normal(size=n)
    s2 = 0.5 * shift * y + common + 0.7 * rng.normal(size=n)
    if decimals is not None:
        s1, s2 = np.round(s1, decimals), np.round(s2, decimals)
    return y, s1, s2


def _naive_components(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Placement values from the full m x n kernel psi(X_i, Y_j) = 1, 0.5, 0."""
    x, yneg = s[y == 1], s[y == 0]
    psi = (x[:, None] > yneg[None, :]) + 0.5 * (x[:, None] == yneg[None, :])
    return psi.mean(axis=1), psi.mean(axis=0)  # V10 (per positive), V01 (per negative)


def _naive_cov(y: np.ndarray, scores: list[np.ndarray]) -> np.ndarray:
    m, n = int(y.sum()), int((1 - y).sum())
    comps = [_naive_components(y, s) for s in scores]
    k = len(scores)
    cov = np.empty((k, k))
    for r, c in itertools.product(range(k), repeat=2):
        v10r, v01r = comps[r]
        v10c, v01c = comps[c]
        s10 = np.sum((v10r - v10r.mean()) * (v10c - v10c.mean())) / (m - 1)
        s01 = np.sum((v01r - v01r.mean()) * (v01c - v01c.mean())) / (n - 1)
        cov[r, c] = s10 / m + s01 / n
    return cov


class _Recorder:
    """A metric that records what it was given and returns the mean score."""

    def __init__(self) -> None:
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []

    def __call__(self, y: np.ndarray, s: np.ndarray) -> float:
        self.calls.append((np.asarray(y).copy(), np.asarray(s).copy()))
        return float(np.mean(s))


# --------------------------------------------------------------------------------------------
# point metrics and validation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seed", "n", "decimals"), [(0, 50, None), (1, 200, None), (2, 300, 1), (3, 40, 0)]
)
def test_auc_and_ap_equal_sklearn(seed: int, n: int, decimals: int | None) -> None:
    # Prepare
    y, s1, _ = _data(seed, n, decimals=decimals)
    # Execute
    got_auc, got_ap = S.auc(y, s1), S.average_precision(y, s1)
    # Assert
    assert got_auc == pytest.approx(roc_auc_score(y, s1), abs=1e-15)
    assert got_ap == pytest.approx(average_precision_score(y, s1), abs=1e-15)


def test_metrics_accept_bool_labels() -> None:
    # Prepare
    y, s1, _ = _data(4, 60)
    # Execute / Assert
    assert S.auc(y.astype(bool), s1) == S.auc(y, s1)
    assert S.average_precision(y.astype(bool), s1) == S.average_precision(y, s1)


@pytest.mark.parametrize("func", [S.auc, S.average_precision])
@pytest.mark.parametrize(
    ("y", "s", "match"),
    [
        ([1, 1, 1], [0.1, 0.2, 0.3], r"y: expected both classes \(0 and 1\) present, got only "),
        ([0, 0, 0], [0.1, 0.2, 0.3], r"y: expected both classes .* got only class 0"),
        ([0, 1, 2], [0.1, 0.2, 0.3], r"y: expected binary labels in \{0, 1\}, got values \[2"),
        ([0, 1, 1, 0], [0.1, math.nan, 0.3, 0.4], r"s: expected finite scores, got 1 NaN/inf"),
        ([0, 1, 1, 0], [0.1, math.inf, 0.3, 0.4], r"s: expected finite scores, got 1 NaN/inf"),
        ([0, 1, 1, 0], [0.1, 0.2, 0.3], r"s: expected the same length as y \(4\), got length 3"),
        ([[0, 1], [1, 0]], [0.1, 0.2], r"y: expected a 1-D array, got shape \(2, 2\)"),
        ([], [], r"y: expected a non-empty label array"),
    ],
)
def test_metric_validation_errors(func, y, s, match: str) -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match=match):
        func(y, s)


def test_pair_functions_name_the_offending_score_vector() -> None:
    # Prepare
    y, s1, s2 = _data(5, 30)
    bad = s2.copy()
    bad[3] = math.nan
    # Execute / Assert
    with pytest.raises(ValueError, match=r"s2: expected finite scores"):
        S.delong_paired(y, s1, bad)
    with pytest.raises(ValueError, match=r"s2: expected the same length as y \(30\), got length"):
        S.paired_bootstrap_ap(y, s1, s2[:-1])
    with pytest.raises(ValueError, match=r"y_val: expected both classes"):
        S.threshold_for_sensitivity(np.ones(5), np.arange(5.0))


# --------------------------------------------------------------------------------------------
# operating point
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "threshold", "sens", "spec"),
    [(0.75, 0.7, 0.75, 1.0), (0.5, 0.8, 0.5, 1.0), (0.9, 0.1, 1.0, 0.0), (1.0, 0.1, 1.0, 0.0)],
)
def test_threshold_for_sensitivity_hand_worked(
    target: float, threshold: float, sens: float, spec: float
) -> None:
    # Prepare: 4 positives (0.9, 0.8, 0.7, 0.1), 2 negatives (0.5, 0.2)
    y = np.array([1, 1, 1, 1, 0, 0])
    s = np.array([0.9, 0.8, 0.7, 0.1, 0.5, 0.2])
    # Execute
    t = S.threshold_for_sensitivity(y, s, target)
    # Assert
    assert t == threshold
    assert S.sens_spec_at(y, s, t) == (sens, spec)


def test_threshold_target_not_rounded_up_by_float_error() -> None:
    # Prepare: 10 positives 1..10; 0.9 * 10 = 9.000000000000002 must still mean 9 positives
    y = np.array([1] * 10 + [0] * 3)
    s = np.array([*range(1, 11), 0, 0, 0], dtype=float)
    # Execute
    t = S.threshold_for_sensitivity(y, s, 0.9)
    # Assert
    assert t == 2.0
    assert S.sens_spec_at(y, s, t) == (0.9, 1.0)


def test_sens_spec_with_ties_at_threshold_counts_ties_positive() -> None:
    # Prepare
    y = np.array([1, 1, 0, 0])
    s = np.array([0.5, 0.4, 0.5, 0.1])
    # Execute / Assert
    assert S.sens_spec_at(y, s, 0.5) == (0.5, 0.5)


# --------------------------------------------------------------------------------------------
# DeLong
# --------------------------------------------------------------------------------------------

DELONG_CASES = [
    (10, 80, None),  # continuous, no ties
    (11, 150, 1),  # many ties
    (12, 60, 0),  # heavy ties (integer scores)
    (13, 9, 0),  # tiny sample
]


@pytest.mark.parametrize(("seed", "n", "decimals"), DELONG_CASES)
def test_delong_variance_equals_naive_placement_values(
    seed: int, n: int, decimals: int | None
) -> None:
    # Prepare
    y, s1, _ = _data(seed, n, decimals=decimals)
    m, k = int(y.sum()), int((1 - y).sum())
    v10, v01 = _naive_components(y, s1)
    expected = v10.var(ddof=1) / m + v01.var(ddof=1) / k
    # Execute
    got = S.delong_variance(y, s1)
    # Assert
    assert got == pytest.approx(expected, abs=1e-10, rel=0)
    assert got > 0


@pytest.mark.parametrize(("seed", "n", "decimals"), DELONG_CASES)
def test_delong_paired_covariance_equals_naive(seed: int, n: int, decimals: int | None) -> None:
    # Prepare
    y, s1, s2 = _data(seed, n, decimals=decimals)
    s3 = -s1 + s2  # a third, differently correlated curve
    # Execute
    aucs, cov = S.delong_covariance(y, [s1, s2, s3])
    # Assert
    np.testing.assert_allclose(cov, _naive_cov(y, [s1, s2, s3]), atol=1e-10, rtol=0)
    np.testing.assert_allclose(aucs, [roc_auc_score(y, s) for s in (s1, s2, s3)], atol=1e-12)


@pytest.mark.parametrize(("seed", "n", "decimals"), DELONG_CASES)
def test_delong_paired_matches_sklearn_auc_and_wald_formula(
    seed: int, n: int, decimals: int | None
) -> None:
    # Prepare
    y, s1, s2 = _data(seed, n, decimals=decimals)
    cov = _naive_cov(y, [s1, s2])
    se = math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    # Execute
    r = S.delong_paired(y, s1, s2)
    # Assert
    assert r.auc1 == pytest.approx(roc_auc_score(y, s1), abs=1e-12)
    assert r.auc2 == pytest.approx(roc_auc_score(y, s2), abs=1e-12)
    assert r.diff == pytest.approx(r.auc1 - r.auc2, abs=1e-15)
    assert r.se == pytest.approx(se, abs=1e-10)
    assert r.z == pytest.approx(r.diff / se, rel=1e-9)
    assert r.p_value == pytest.approx(2 * st.norm.sf(abs(r.diff / se)), rel=1e-9)
    assert r.ci_low == pytest.approx(r.diff - 1.959963984540054 * se, abs=1e-10)
    assert r.ci_high == pytest.approx(r.diff + 1.959963984540054 * se, abs=1e-10)


def test_delong_identical_scores_give_zero_difference_and_p_one() -> None:
    # Prepare
    y, s1, _ = _data(20, 100, decimals=1)
    # Execute
    r = S.delong_paired(y, s1, s1.copy())
    # Assert
    assert (r.diff, r.se, r.z, r.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert (r.ci_low, r.ci_high) == (0.0, 0.0)


def test_delong_zero_variance_nonzero_difference_is_defined() -> None:
    # Prepare: s1 separates perfectly, s2 is constant: both have constant placement values
    y = np.array([1, 1, 1, 0, 0, 0])
    s1 = np.array([3.0, 2.0, 2.5, 0.0, 1.0, 0.5])
    s2 = np.zeros(6)
    # Execute
    r = S.delong_paired(y, s1, s2)
    # Assert
    assert (r.auc1, r.auc2, r.diff, r.se) == (1.0, 0.5, 0.5, 0.0)
    assert r.z == math.inf and r.p_value == 0.0
    assert (r.ci_low, r.ci_high) == (0.5, 0.5)


def test_delong_strongly_better_classifier_is_significant() -> None:
    # Prepare
    rng = np.random.default_rng(21)
    y = np.repeat([1, 0], 100)
    good = 2.5 * y + rng.normal(size=200)
    weak = 0.3 * y + rng.normal(size=200)
    # Execute
    r = S.delong_paired(y, good, weak)
    # Assert
    assert r.diff > 0.2
    assert r.p_value < 0.01
    assert r.ci_low > 0


def test_delong_requires_two_of_each_class() -> None:
    # Prepare
    y = np.array([1, 0, 0, 0])
    s = np.array([0.9, 0.1, 0.2, 0.3])
    # Execute / Assert
    with pytest.raises(ValueError, match=r"y: expected at least 2 positives and 2 negatives"):
        S.delong_variance(y, s)


# --------------------------------------------------------------------------------------------
# paired bootstrap
# --------------------------------------------------------------------------------------------


def test_bootstrap_is_deterministic_per_seed() -> None:
    # Prepare
    y, s1, s2 = _data(30, 150)
    # Execute
    a = S.paired_bootstrap_ap(y, s1, s2, n_boot=500, seed=7)
    b = S.paired_bootstrap_ap(y, s1, s2, n_boot=500, seed=7)
    c = S.paired_bootstrap_ap(y, s1, s2, n_boot=500, seed=8)
    # Assert
    assert a == b
    assert (a.ci_low, a.ci_high) != (c.ci_low, c.ci_high)
    assert a.diff == c.diff


def test_bootstrap_preserves_strata_and_pairs_the_same_cases() -> None:
    # Prepare: s2 = s1 + 10, so a paired replicate sees exactly s1* + 10
    y, s1, _ = _data(31, 37)
    s2 = s1 + 10.0
    m, total = int(y.sum()), y.size
    rec = _Recorder()
    # Execute
    r = S.paired_bootstrap(y, s1, s2, metric=rec, n_boot=50, seed=3)
    # Assert
    assert len(rec.calls) == 2 + 2 * 50  # observed pair, then one pair per replicate
    for yb, _ in rec.calls:
        assert (int(yb.sum()), yb.size) == (m, total)
    pos_scores, neg_scores = set(s1[y == 1]), set(s1[y == 0])
    for (y_a, s_a), (y_b, s_b) in zip(rec.calls[2::2], rec.calls[3::2], strict=True):
        np.testing.assert_array_equal(y_a, y_b)
        np.testing.assert_allclose(s_b, s_a + 10.0, atol=1e-12)
        assert set(s_a[y_a == 1]) <= pos_scores and set(s_a[y_a == 0]) <= neg_scores
    assert r.diff == pytest.approx(-10.0)


@pytest.mark.parametrize(("seed", "decimals"), [(40, None), (41, 1), (42, 0)])
@pytest.mark.parametrize("metric", [S.average_precision, S.auc])
def test_vectorised_bootstrap_equals_per_replicate_loop(seed: int, decimals, metric) -> None:
    # Prepare: a wrapper is not recognised as vectorisable, so it takes the per-replicate path
    y, s1, s2 = _data(seed, 90, decimals=decimals)

    def wrapped(yy: np.ndarray, ss: np.ndarray) -> float:
        return metric(yy, ss)

    # Execute
    fast = S.paired_bootstrap(y, s1, s2, metric=metric, n_boot=300, seed=1)
    slow = S.paired_bootstrap(y, s1, s2, metric=wrapped, n_boot=300, seed=1)
    # Assert
    assert fast.diff == slow.diff
    assert fast.ci_low == pytest.approx(slow.ci_low, abs=1e-12)
    assert fast.ci_high == pytest.approx(slow.ci_high, abs=1e-12)
    assert fast.p_value == pytest.approx(slow.p_value, abs=1e-12)


@pytest.mark.parametrize("seed", [50, 51, 52])
def test_bootstrap_ci_contains_observed_difference(seed: int) -> None:
    # Prepare
    y, s1, s2 = _data(seed, 200)
    # Execute
    r = S.paired_bootstrap_ap(y, s1, s2, n_boot=1000, seed=0)
    # Assert
    assert r.diff == pytest.approx(
        average_precision_score(y, s1) - average_precision_score(y, s2), abs=1e-15
    )
    assert r.ci_low < r.diff < r.ci_high
    assert 1 / 1001 <= r.p_value <= 1.0


def test_bootstrap_identical_scores_give_zero_difference_and_p_one() -> None:
    # Prepare
    y, s1, _ = _data(60, 80, decimals=1)
    # Execute
    r = S.paired_bootstrap_ap(y, s1, s1.copy(), n_boot=200)
    # Assert
    assert (r.diff, r.ci_low, r.ci_high, r.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_bootstrap_p_value_floor_for_a_clear_winner() -> None:
    # Prepare
    rng = np.random.default_rng(61)
    y = np.repeat([1, 0], 100)
    good = 3.0 * y + rng.normal(size=200)
    weak = 0.1 * y + rng.normal(size=200)
    # Execute
    r = S.paired_bootstrap_ap(y, good, weak, n_boot=400)
    # Assert
    assert r.p_value == 1 / 401
    assert r.ci_low > 0


# --------------------------------------------------------------------------------------------
# seed level
# --------------------------------------------------------------------------------------------

SEED_DIFFS = [
    [0.02, 0.01, 0.03, -0.005, 0.015],
    [0.01, -0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08],
    [0.01, 0.01, 0.02, -0.01, 0.0, 0.03],  # ties and a zero
    [-0.1, -0.2, -0.05, -0.3, 0.01, -0.02, -0.04, -0.06, -0.07, -0.08],
]


@pytest.mark.parametrize("diffs", SEED_DIFFS)
def test_wilcoxon_p_equals_scipy(diffs: list[float]) -> None:
    # Execute
    r = S.seed_level_test(diffs, method="wilcoxon")
    # Assert
    assert r.p_value == st.wilcoxon(diffs).pvalue
    assert r.n == len(diffs)


@pytest.mark.parametrize("diffs", SEED_DIFFS)
def test_permutation_p_equals_brute_force_enumeration(diffs: list[float]) -> None:
    # Prepare
    d = np.asarray(diffs)
    obs = abs(d.sum())
    flips = [abs(np.dot(sg, d)) for sg in itertools.product([-1, 1], repeat=d.size)]
    expected = np.mean([f >= obs - 1e-12 for f in flips])
    # Execute
    r = S.seed_level_test(diffs, method="permutation")
    # Assert
    assert r.p_value == pytest.approx(expected, abs=1e-15)


def test_permutation_all_positive_n8_is_two_over_256() -> None:
    # Execute
    r = S.seed_level_test([0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08], "permutation")
    # Assert
    assert r.p_value == 2 / 256
    assert (r.n_better, r.n) == (8, 8)


def test_permutation_monte_carlo_for_many_seeds() -> None:
    # Prepare
    d = np.linspace(0.01, 0.2, 20)
    # Execute
    a = S.seed_level_test(d, "permutation", n_permutations=2000, seed=1)
    b = S.seed_level_test(d, "permutation", n_permutations=2000, seed=1)
    # Assert: all-same-sign flips have probability 2**-19, so essentially no hits
    assert a == b
    assert 1 / 2001 <= a.p_value <= 3 / 2001


@pytest.mark.parametrize(
    ("diffs", "n_better", "mean"),
    [
        ([0.1, -0.1, 0.0, 0.2], 2, 0.05),
        ([-0.1, -0.2, -0.3], 0, -0.2),
        ([0.3, 0.1, 0.2, 0.4, 0.5], 5, 0.3),
    ],
)
@pytest.mark.parametrize("method", ["wilcoxon", "permutation"])
def test_seed_level_counts_mean_and_t_interval(
    diffs: list[float], n_better: int, mean: float, method: str
) -> None:
    # Prepare
    d = np.asarray(diffs)
    lo, hi = st.t.interval(0.95, d.size - 1, loc=d.mean(), scale=st.sem(d))
    # Execute
    r = S.seed_level_test(diffs, method=method)
    # Assert
    assert (r.n_better, r.n) == (n_better, len(diffs))
    assert r.mean_diff == pytest.approx(mean, abs=1e-15)
    assert (r.ci_low, r.ci_high) == pytest.approx((lo, hi), abs=1e-12)


@pytest.mark.parametrize("method", ["wilcoxon", "permutation"])
def test_seed_level_all_zero_differences(method: str) -> None:
    # Execute
    r = S.seed_level_test([0.0, 0.0, 0.0, 0.0], method=method)
    # Assert
    assert (r.mean_diff, r.n_better, r.n, r.p_value) == (0.0, 0, 4, 1.0)
    assert (r.ci_low, r.ci_high) == (0.0, 0.0)


@pytest.mark.parametrize("method", ["wilcoxon", "permutation"])
def test_seed_level_single_seed_has_nan_interval(method: str) -> None:
    # Execute
    r = S.seed_level_test([0.03], method=method)
    # Assert
    assert (r.n, r.n_better, r.p_value) == (1, 1, 1.0)
    assert math.isnan(r.ci_low) and math.isnan(r.ci_high)


@pytest.mark.parametrize(
    ("diffs", "method", "match"),
    [
        ([], "wilcoxon", r"diffs: expected at least one"),
        ([0.1, math.nan], "wilcoxon", r"diffs: expected finite differences, got 1"),
        ([0.1, 0.2], "ttest", r"method: expected 'wilcoxon' or 'permutation', got 'ttest'"),
    ],
)
def test_seed_level_validation(diffs: list[float], method: str, match: str) -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match=match):
        S.seed_level_test(diffs, method=method)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Holm and summaries
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("p", "expected"),
    [
        ([0.01, 0.04, 0.03, 0.005], [0.03, 0.06, 0.06, 0.02]),
        ([0.5, 0.6], [1.0, 1.0]),  # capped at 1
        ([0.04], [0.04]),
        ([0.01, 0.01, 0.2], [0.03, 0.03, 0.2]),  # ties; the last step stays monotone
        ([], []),
    ],
)
def test_holm_hand_worked(p: list[float], expected: list[float]) -> None:
    # Execute
    got = S.holm(p)
    # Assert
    assert got == pytest.approx(expected, abs=1e-15)
    assert isinstance(got, list)


def test_holm_is_monotone_in_the_raw_order() -> None:
    # Prepare
    p = np.random.default_rng(70).uniform(0, 0.2, 12)
    # Execute
    adj = np.asarray(S.holm(p))
    # Assert
    order = np.argsort(p)
    assert np.all(np.diff(adj[order]) >= 0)
    assert np.all(adj >= p) and np.all(adj <= 1)


def test_holm_rejects_invalid_p_values() -> None:
    with pytest.raises(ValueError, match=r"p_values: expected values in \[0, 1\]"):
        S.holm([0.1, 1.2])


@pytest.mark.parametrize(
    ("values", "mean", "sd"),
    [([1.0, 2.0, 3.0, 4.0], 2.5, math.sqrt(5 / 3)), ([0.7, 0.7], 0.7, 0.0)],
)
def test_summarize_mean_and_sample_sd(values: list[float], mean: float, sd: float) -> None:
    # Execute / Assert
    assert S.summarize(values) == pytest.approx((mean, sd), abs=1e-15)


def test_summarize_single_value_has_nan_sd_and_empty_raises() -> None:
    # Execute
    mean, sd = S.summarize([0.81])
    # Assert
    assert mean == 0.81 and math.isnan(sd)
    with pytest.raises(ValueError, match=r"values: expected at least one value"):
        S.summarize([])
