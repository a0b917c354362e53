"""The control for a membership-inference AUC: what an attack that knows nothing would score.

With few cases an AUC far from 0.5 can be luck. When the losses carry no information about
membership, every ordering of ``m`` member and ``n`` non-member losses is equally likely, so
the AUC (the Mann-Whitney U statistic over ``m * n``) has an exact null distribution that
depends on the two group sizes only: the coefficients of the Gaussian binomial
``[m + n choose m]_q``. From it come the 95 % range of a no-signal attack and the one-sided
chance of reaching an observed AUC. Large groups use the normal approximation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

EXACT_MAX_PAIRS = 20_000  # m * n; beyond, the exact count costs more than it adds


@dataclass(frozen=True)
class ChanceAuc:
    members: int
    non_members: int
    low: float  # 2.5 % quantile of the AUC under no signal
    high: float  # 97.5 % quantile
    method: str

    def p_at_least(self, auc: float) -> float:
        """P(AUC >= ``auc``) for an attack with no signal (one-sided)."""
        return _tail(self.members, self.non_members, auc)


def _u_counts(m: int, n: int) -> list[int]:
    """Number of orderings with each U = 0..m*n (exact integers)."""
    size = m * n + 1
    c = [0] * size
    c[0] = 1
    # multiply by (1 - q^(n+i)) and divide by (1 - q^i), i = 1..m; the product stays a
    # polynomial with non-negative integer coefficients after each step
    for i in range(1, m + 1):
        a = n + i
        for k in range(size - 1, a - 1, -1):
            c[k] -= c[k - a]
        for k in range(i, size):
            c[k] += c[k - i]
    return c


def _normal_sd(m: int, n: int) -> float:
    return math.sqrt((m + n + 1) / (12.0 * m * n))


def _tail(m: int, n: int, auc: float) -> float:
    if m * n <= EXACT_MAX_PAIRS:
        c = _u_counts(m, n)
        u = math.ceil(auc * m * n - 1e-9)
        return sum(c[max(u, 0) :]) / sum(c)
    z = (auc - 0.5) / _normal_sd(m, n)
    return 0.5 * math.erfc(z / math.sqrt(2))


def chance_auc(members: int, non_members: int, level: float = 0.95) -> ChanceAuc:
    """The central ``level`` range of the AUC of a no-signal attack on these group sizes."""
    m, n = int(members), int(non_members)
    if m < 1 or n < 1:
        raise ValueError("both groups need at least one case")
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
    if m * n <= EXACT_MAX_PAIRS:
        c = _u_counts(m, n)
        total = sum(c)
        cum, lo, hi = 0, None, None
        for u, k in enumerate(c):
            cum += k
            if lo is None and cum / total >= lo_q:
                lo = u
            if hi is None and cum / total >= hi_q:
                hi = u
        assert lo is not None and hi is not None
        return ChanceAuc(m, n, lo / (m * n), hi / (m * n), "exact (Mann-Whitney null)")
    from statistics import NormalDist

    z = NormalDist().inv_cdf(hi_q)
    sd = _normal_sd(m, n)
    return ChanceAuc(m, n, max(0.0, 0.5 - z * sd), min(1.0, 0.5 + z * sd), "normal approximation")
