import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mask_store.stats import difference, newcombe, score_interval, t_quantile, wilson


@pytest.mark.parametrize(
    "p, df, expected",
    [(0.975, 1, 12.7062), (0.975, 3, 3.1824), (0.975, 5, 2.5706), (0.975, 10, 2.2281), (0.975, 30, 2.0423),
     (0.975, 1000, 1.9623), (0.95, 7, 1.8946), (0.975, 2.5, 3.574655)]  # last: mpmath,
)
def test_t_quantile_matches_tables(p, df, expected):
    assert t_quantile(p, df) == pytest.approx(expected, abs=1e-4)


def test_wilson_and_newcombe_match_published_values():
    # Newcombe (1998), Table I and II: 81/263 -> [0.2553, 0.3662]; 56/70 - 48/80 -> [0.0524, 0.3339]
    assert wilson(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert newcombe(48, 80, 56, 70) == pytest.approx((0.0524, 0.3339), abs=1e-4)


@given(st.integers(1, 500).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_stays_in_0_1_and_holds_the_estimate(kn):
    k, n = kn
    lo, hi = wilson(k, n)
    assert 0.0 <= lo <= k / n <= hi <= 1.0 and hi - lo > 0


@given(st.integers(1, 200).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))),
       st.integers(1, 200).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_newcombe_stays_in_range_and_holds_the_estimate(a, b):
    lo, hi = newcombe(*a, *b)
    d = b[0] / b[1] - a[0] / a[1]
    assert -1.0 <= lo <= d + 1e-12 and d - 1e-12 <= hi <= 1.0


def test_binary_scores_get_wilson_and_others_t():
    mean, (lo, hi) = score_interval(np.array([1.0, 0, 0, 0, 0]))
    assert mean == 0.2 and lo >= 0 and (lo, hi) == wilson(1, 5)
    mean, (lo, hi) = score_interval(np.array([0.1, 0.3]))
    assert lo < 0.2 < hi and lo == pytest.approx(0.2 - t_quantile(0.975, 1) * math.sqrt(0.02) / math.sqrt(2))
    assert score_interval(np.array([])) == (None, None) and score_interval(np.array([0.5])) == (0.5, None)


def test_welch_difference_covers_a_known_gap():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.0, 1.0, 400), rng.normal(0.5, 2.0, 300)
    diff, (lo, hi) = difference(a, b)
    assert lo < 0.5 < hi and lo < diff < hi
    assert difference(a[:1], b) is None
