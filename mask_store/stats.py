"""95% intervals for scores: what `mask-eval`, `mask-train --eval` and the A/B report put beside every number.

Scores that are all 0 or 1 (exact match, pass/fail) are proportions: their intervals are Wilson's, which stay inside
[0, 1] and keep their coverage on small counts where the normal approximation goes below 0; the difference of two
proportions gets Newcombe's hybrid score interval (method 10 in Newcombe, Stat. Med. 17:873, 1998), built from the
two Wilson intervals. When both sides scored the same problems (a mask against its base in `mask-eval`, two methods
in the reproduction's table) the scores are paired, and the paired form of that interval (method 10 in Newcombe,
Stat. Med. 17:2635, 1998) is used: it accounts for the problems both sides get right or wrong together, which the
independent form counts as noise, and so is narrower where the two agree on most problems. Other scores use
Student's t for a mean (and for a paired difference) and Welch for an unpaired one; the t quantile comes from its
exact CDF, so no SciPy is needed.
"""

import math
from statistics import NormalDist

import numpy as np

Z95 = NormalDist().inv_cdf(0.975)


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion; (0, 1) with no trials."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    lower = 0.0 if successes == 0 else max(0.0, centre - half)  # exact at the ends, where rounding would miss them
    upper = 1.0 if successes == n else min(1.0, centre + half)
    return lower, upper


def newcombe(k1: int, n1: int, k2: int, n2: int, z: float = Z95) -> tuple[float, float]:
    """Interval for p2 - p1 (Newcombe's method 10), inside [-1, 1]."""
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson(k1, n1, z)
    l2, u2 = wilson(k2, n2, z)
    d = p2 - p1
    lower = d - math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2)
    upper = d + math.sqrt((u2 - p2) ** 2 + (p1 - l1) ** 2)
    return max(-1.0, lower), min(1.0, upper)


def newcombe_paired(both: int, only_first: int, only_second: int, neither: int,
                    z: float = Z95) -> tuple[float, float]:
    """Interval for p2 - p1 on n paired trials (Newcombe's paired method 10), inside [-1, 1].

    The cells count the pairs by outcome: both succeed, only the first, only the second, neither. The two Wilson
    intervals are combined with the correlation of the pairs, phi, shrunk towards 0 by n/2 when positive, as
    Newcombe defines it (the same rule as Altman et al., Statistics with Confidence, 2000, ch. 6)."""
    n = both + only_first + only_second + neither
    k1, k2 = both + only_first, both + only_second
    p1, p2 = k1 / n, k2 / n
    l1, u1 = wilson(k1, n, z)
    l2, u2 = wilson(k2, n, z)
    margins = k1 * (n - k1) * k2 * (n - k2)
    cross = both * neither - only_first * only_second
    shrunk = cross - n / 2 if cross > n / 2 else (cross if cross < 0 else 0.0)
    phi = shrunk / math.sqrt(margins) if margins else 0.0
    d = p2 - p1
    lower = d - math.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2))
    upper = d + math.sqrt(max(0.0, (u2 - p2) ** 2 - 2 * phi * (u2 - p2) * (p1 - l1) + (p1 - l1) ** 2))
    return max(-1.0, lower), min(1.0, upper)


def is_binary(scores: np.ndarray) -> bool:
    return bool(len(scores)) and bool(np.isin(scores, (0.0, 1.0)).all())


def interval_method(scores: np.ndarray) -> str:
    return "wilson" if is_binary(scores) else "t"


def score_interval(scores: np.ndarray) -> tuple[float | None, tuple[float, float] | None]:
    """The mean score and its 95% interval (None with no scores; a t interval needs two)."""
    if len(scores) == 0:
        return None, None
    mean = float(scores.mean())
    if is_binary(scores):
        return mean, wilson(int(scores.sum()), len(scores))
    if len(scores) < 2:
        return mean, None
    half = t_quantile(0.975, len(scores) - 1) * float(scores.std(ddof=1)) / math.sqrt(len(scores))
    return mean, (mean - half, mean + half)


def difference(control: np.ndarray, other: np.ndarray) -> tuple[float, tuple[float, float]] | None:
    """other - control with a 95% interval (Newcombe for 0/1 scores, else Welch); None with fewer than two scores on
    a side."""
    if len(control) < 2 or len(other) < 2:
        return None
    diff = float(other.mean() - control.mean())
    if is_binary(control) and is_binary(other):
        return diff, newcombe(int(control.sum()), len(control), int(other.sum()), len(other))
    va, vb = control.var(ddof=1) / len(control), other.var(ddof=1) / len(other)
    se = math.sqrt(va + vb)
    if se == 0:
        return diff, (diff, diff)
    df = (va + vb) ** 2 / (va**2 / (len(control) - 1) + vb**2 / (len(other) - 1))
    half = t_quantile(0.975, df) * se
    return diff, (diff - half, diff + half)


def paired_difference(control: np.ndarray, other: np.ndarray) -> tuple[float, tuple[float, float]] | None:
    """other - control where element i of both is the score of problem i: Newcombe's paired interval for 0/1 scores,
    else a paired t interval; None with fewer than two problems."""
    if len(control) != len(other):
        raise ValueError(f"paired scores need the same problems: {len(control)} against {len(other)}")
    if len(control) < 2:
        return None
    diff = float(other.mean() - control.mean())
    if is_binary(control) and is_binary(other):
        first, second = control.astype(bool), other.astype(bool)
        cells = [int((first & second).sum()), int((first & ~second).sum()), int((~first & second).sum()),
                 int((~first & ~second).sum())]
        return diff, newcombe_paired(*cells)
    gaps = other - control
    half = t_quantile(0.975, len(gaps) - 1) * float(gaps.std(ddof=1)) / math.sqrt(len(gaps))
    return diff, (diff - half, diff + half)


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (modified Lentz; Numerical Recipes 6.4)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _t_cdf(t: float, df: float) -> float:
    x = df / (df + t * t)
    front = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - math.lgamma(0.5)
                     + (df / 2) * math.log(x) + 0.5 * math.log1p(-x))
    if x < (df / 2 + 1) / (df / 2 + 2.5):
        tail = front * _betacf(df / 2, 0.5, x) / (df / 2)  # P(|T| > |t|)
    else:
        tail = 1.0 - front * _betacf(0.5, df / 2, 1.0 - x) / 0.5
    return 1.0 - tail / 2 if t >= 0 else tail / 2


def t_quantile(p: float, df: float) -> float:
    """Student's t quantile for p > 0.5, by bisection on the exact CDF (any real df > 0)."""
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2
