import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mask_store.stats import (difference, newcombe, newcombe_paired, paired_difference, score_interval, t_quantile,
                              wilson)


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


def test_paired_newcombe_matches_the_published_example():
    # Newcombe (1998, Stat. Med. 17:2635), the worked example: 36 pairs both, 12 only the first, 2 only the second,
    # none neither: p1 - p2 = 0.2 in [0.0569, 0.3404] by method 10
    assert newcombe_paired(36, 2, 12, 0) == pytest.approx((0.0569, 0.3404), abs=1e-4)
    lo, hi = newcombe_paired(36, 12, 2, 0)
    assert (-hi, -lo) == pytest.approx((0.0569, 0.3404), abs=1e-4)


@given(st.lists(st.sampled_from([(1, 1), (1, 0), (0, 1), (0, 0)]), min_size=2, max_size=300))
def test_paired_difference_stays_in_range_and_holds_the_estimate(pairs):
    control, other = (np.array(side, dtype=float) for side in zip(*pairs))
    diff, (lo, hi) = paired_difference(control, other)
    assert diff == pytest.approx(other.mean() - control.mean())
    assert -1.0 <= lo <= diff + 1e-12 and diff - 1e-12 <= hi <= 1.0


def test_paired_interval_covers_at_its_level_and_is_narrower_when_the_pairs_agree():
    """Two methods that agree on most of 150 problems, as a mask and its base do: the paired interval holds the true
    gap about 95% of the time, where the independent one is wider than it needs to be."""
    rng = np.random.default_rng(1)
    n, true_gap, covered, narrower = 150, 0.04, 0, 0
    for _ in range(400):
        control = (rng.random(n) < 0.5).astype(float)
        flip = rng.random(n)
        other = control.copy()
        other[(control == 0) & (flip < 0.12)] = 1.0  # wrong -> right on 12% of the wrong ones
        other[(control == 1) & (flip < 0.04)] = 0.0  # right -> wrong on 4% of the right ones: gap 0.06 - 0.02
        _, (lo, hi) = paired_difference(control, other)
        covered += lo <= true_gap <= hi
        _, (ulo, uhi) = difference(control, other)
        narrower += (hi - lo) < (uhi - ulo)
    assert covered / 400 >= 0.92
    assert narrower / 400 >= 0.95


def test_paired_difference_needs_the_same_problems():
    with pytest.raises(ValueError, match="same problems"):
        paired_difference(np.ones(3), np.ones(4))
    assert paired_difference(np.ones(1), np.zeros(1)) is None
    diff, (lo, hi) = paired_difference(np.array([0.1, 0.5, 0.2]), np.array([0.3, 0.6, 0.5]))
    assert diff == pytest.approx(0.2) and lo < 0.2 < hi  # non-binary scores: a paired t interval


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
