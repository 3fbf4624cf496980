import json

import numpy as np
import pytest
from scipy import stats

from physgen import PhysgenError
from physgen.stats import (
    Interval,
    bootstrap_interval,
    iqm,
    probability_of_improvement,
    summarize,
    wilson_interval,
)

RATES = np.array([0.55, 0.7, 0.6, 0.85, 0.4, 0.75, 0.9, 0.65, 0.5, 0.8])


def test_iqm_by_hand_and_against_scipy_trim_mean():
    assert iqm([1, 2, 3, 4, 5, 6, 7, 8]) == pytest.approx(4.5)  # mean of 3, 4, 5, 6
    assert iqm([8, 1, 7, 2, 6, 3, 5, 4]) == pytest.approx(4.5)
    values = np.random.default_rng(3).normal(size=13)
    assert iqm(values) == pytest.approx(stats.trim_mean(values, 0.25))


def _trimmed(values, axis):
    return stats.trim_mean(values, 0.25, axis=axis)


@pytest.mark.parametrize("statistic, function", [("mean", np.mean), ("iqm", _trimmed)])
def test_bootstrap_matches_scipy_percentile_bootstrap(statistic, function):
    ours = bootstrap_interval(RATES, statistic, resamples=10_000, seed=0)
    ref = stats.bootstrap((RATES,), function, method="percentile", n_resamples=10_000, confidence_level=0.95,
                          rng=np.random.default_rng(1)).confidence_interval
    assert ours.estimate == pytest.approx(function(RATES, axis=0))
    assert ours.low == pytest.approx(ref.low, abs=0.02)
    assert ours.high == pytest.approx(ref.high, abs=0.02)
    assert ours.low <= ours.estimate <= ours.high


def test_bootstrap_is_seeded():
    first, again = bootstrap_interval(RATES, seed=5), bootstrap_interval(RATES, seed=5)
    other = bootstrap_interval(RATES, seed=6)
    assert first == again
    assert (first.low, first.high) != (other.low, other.high)
    narrow = bootstrap_interval(RATES, confidence=0.5)
    wide = bootstrap_interval(RATES, confidence=0.99)
    assert wide.low < narrow.low <= narrow.high < wide.high


def test_all_equal_values_give_a_degenerate_interval():
    for statistic in ("mean", "iqm"):
        assert bootstrap_interval([0.3] * 7, statistic) == pytest.approx((0.3, 0.3, 0.3))
    assert probability_of_improvement([1.0] * 4, [1.0] * 6) == (0.5, 0.5, 0.5)
    assert probability_of_improvement([2.0, 3.0], [0.0, 1.0]) == (1.0, 1.0, 1.0)


def _wilson_roots(successes, trials, confidence):
    """Wilson bounds as the roots of (p - pi)^2 = z^2 pi (1 - pi) / n, solved as a quadratic in pi."""
    z2, p = stats.norm.ppf(0.5 + confidence / 2) ** 2, successes / trials
    roots = np.sort(np.roots([1 + z2 / trials, -(2 * p + z2 / trials), p**2]).real)
    return roots[0], roots[1]


@pytest.mark.parametrize("successes, trials, confidence", [(8, 10, 0.95), (0, 10, 0.95), (10, 10, 0.95),
                                                           (37, 120, 0.9), (1, 3, 0.99)])
def test_wilson_matches_the_closed_form(successes, trials, confidence):
    interval = wilson_interval(successes, trials, confidence)
    low, high = _wilson_roots(successes, trials, confidence)
    assert interval.estimate == successes / trials
    assert interval.low == pytest.approx(low, abs=1e-7)
    assert interval.high == pytest.approx(high, abs=1e-7)


def test_wilson_hand_checked_literals():
    # statsmodels proportion_confint(8, 10, method="wilson") and (0, 10): checked by hand from the formula.
    assert wilson_interval(8, 10)[1:] == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(0, 10)[1:] == pytest.approx((0.0, 0.2775), abs=1e-4)


def test_probability_of_improvement_by_hand_and_against_mann_whitney():
    # pairs (1,0)=1, (1,2)=0, (2,0)=1, (2,2)=0.5 -> 2.5 / 4
    assert probability_of_improvement([1, 2], [0, 2]).estimate == pytest.approx(0.625)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 5, size=9).astype(float), rng.integers(0, 5, size=6).astype(float)  # with ties
    ours = probability_of_improvement(x, y)
    assert ours.estimate == pytest.approx(stats.mannwhitneyu(x, y).statistic / (x.size * y.size))
    assert ours.low <= ours.estimate <= ours.high


def test_probability_of_improvement_bootstrap_resamples_each_method_independently():
    x, y = np.array([0.9, 0.8, 0.3, 0.7, 0.6]), np.array([0.5, 0.2, 0.6, 0.4])
    ours = probability_of_improvement(x, y, resamples=500, confidence=0.9, seed=4)
    rng = np.random.default_rng(4)
    xs, ys = x[rng.integers(0, 5, size=(500, 5))], y[rng.integers(0, 4, size=(500, 4))]
    pairs = (xs[:, :, None] > ys[:, None, :]) + 0.5 * (xs[:, :, None] == ys[:, None, :])
    assert (ours.low, ours.high) == pytest.approx(tuple(np.quantile(pairs.mean(axis=(1, 2)), [0.05, 0.95])))


def test_summarize_reports_json_ready_intervals():
    rng = np.random.default_rng(0)
    success = rng.random((5, 20)) < np.linspace(0.3, 0.9, 5)[:, None]
    returns = rng.normal(0.5, 0.1, size=(5, 20))
    summary = summarize(success, returns, seed=0)
    json.dumps(summary)
    assert summary["per_seed_success"] == pytest.approx(success.mean(axis=1).tolist())
    assert summary["success_mean"] == bootstrap_interval(success.mean(axis=1), "mean").as_dict()
    assert summary["success_iqm"] == bootstrap_interval(success.mean(axis=1), "iqm").as_dict()
    assert summary["success_pooled"] == wilson_interval(int(success.sum()), 100).as_dict()
    assert summary["normalized_return"]["estimate"] == pytest.approx(returns.mean())
    assert summarize(success, None)["normalized_return"] is None
    assert Interval(0.5, 0.25, 0.75).as_dict() == {"estimate": 0.5, "low": 0.25, "high": 0.75}


@pytest.mark.parametrize("call, message", [
    (lambda: iqm([]), "non-empty"),
    (lambda: bootstrap_interval([0.1, np.nan]), "NaN"),
    (lambda: bootstrap_interval(RATES, "median"), "unknown statistic"),
    (lambda: bootstrap_interval(RATES, confidence=1.0), "confidence"),
    (lambda: bootstrap_interval(RATES, resamples=0), "resamples"),
    (lambda: probability_of_improvement([], [1.0]), "x must be a non-empty"),
    (lambda: wilson_interval(0, 0), "trials >= 1"),
    (lambda: wilson_interval(11, 10), "successes <= trials"),
    (lambda: summarize(np.ones(4, bool), None), "per_seed_success must be a non-empty 2-D"),
    (lambda: summarize(np.full((2, 3), 0.5), None), "booleans"),
    (lambda: summarize(np.ones((2, 3), bool), np.ones((3, 3))), "one row per seed"),
])
def test_bad_input_raises_a_physgen_error(call, message):
    with pytest.raises(PhysgenError, match=message):
        call()
