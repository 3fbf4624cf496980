import numpy as np
import pytest
from scipy import special, stats

from physgen import PhysgenError
from physgen.cli import main
from physgen.plan import (checked_coverage, concentration, coverage, detectable_difference, power, seeds_needed,
                          simulate_counts, spread_from_rates)


def test_the_beta_has_the_stated_log_odds_spread_and_mean():
    kappa = concentration(0.3, 0.8)
    draws = np.random.default_rng(0).beta(0.3 * kappa, 0.7 * kappa, 400_000)
    assert special.logit(draws).std() == pytest.approx(0.8, abs=0.01)
    assert draws.mean() == pytest.approx(0.3, abs=0.002)
    assert concentration(0.3, 0.0) == np.inf and concentration(1.0, 0.8) == np.inf


def test_the_spread_of_a_large_simulated_run_is_recovered():
    counts = simulate_counts(np.random.default_rng(0), 1, 3000, 50, 0.3, 0.8)[0]
    assert spread_from_rates(counts / 50, 50) == pytest.approx(0.8, abs=0.03)
    alike = simulate_counts(np.random.default_rng(1), 1, 3000, 50, 0.3, 0.0)[0]
    assert spread_from_rates(alike / 50, 50) < 0.15  # only the episodes' binomial noise: no spread to speak of
    assert spread_from_rates([1.0, 1.0, 1.0], 10) == 0.0


def test_power_without_spread_matches_the_two_sample_normal_approximation():
    # 100 seeds x 10 episodes per method at 0.5 against 0.55: standard error sqrt(2 0.25 / 1000); t_99 quantile
    expected = stats.norm.cdf(0.05 / np.sqrt(2 * 0.25 / 1000) - stats.t.ppf(0.975, 99))
    assert power(0.5, 0.05, 0.0, 100, 10) == pytest.approx(expected, abs=0.05)
    assert power(0.5, -0.05, 0.0, 100, 10) == pytest.approx(expected, abs=0.05)


def test_seeds_needed_is_the_fewest_that_reach_the_power():
    seeds, reached = seeds_needed(0.6, 0.2, 0.5, 10)
    assert reached >= 0.8 and power(0.6, 0.2, 0.5, seeds, 10) == reached
    assert power(0.6, 0.2, 0.5, seeds - 1, 10) < 0.8
    more_episodes, _ = seeds_needed(0.6, 0.2, 0.5, 100)
    assert more_episodes < seeds
    assert seeds_needed(0.6, 0.01, 1.2, 10, most=5) == (None, power(0.6, 0.01, 1.2, 5, 10))


def test_detectable_difference_is_the_smallest_with_the_power():
    found = detectable_difference(0.6, 0.5, 10, 10)
    assert power(0.6, found, 0.5, 10, 10) >= 0.8 or power(0.6, -found, 0.5, 10, 10) >= 0.8
    assert max(power(0.6, found - 0.01, 0.5, 10, 10), power(0.6, 0.01 - found, 0.5, 10, 10)) < 0.8
    assert detectable_difference(0.5, 3.0, 2, 2) is None  # two seeds of two episodes see nothing


def test_checked_coverage_is_the_lowest_over_rates_and_spreads():
    interval = {"estimate": 0.7, "low": 0.55, "high": 0.83}
    lowest = checked_coverage(10, 10, interval, 0.6)
    assert lowest == min(coverage(10, 10, r, s) for r in (0.55, 0.7, 0.83) for s in (0.3, 0.6, 1.2))


def test_physgen_plan_prints_seeds_per_episode_count(capsys):
    assert main(["plan", "--baseline", "0.6", "--difference", "0.2", "--spread", "0.5", "--episodes", "10,100"]) == 0
    out = capsys.readouterr().out
    seeds, _ = seeds_needed(0.6, 0.2, 0.5, 10)
    assert f"| 10 | {seeds} | {seeds * 10:,} |" in out and "| 100 |" in out


@pytest.mark.parametrize("argv, message", [
    (["--baseline", "0.95", "--difference", "0.1"], "baseline + difference in [0, 1]"),
    (["--difference", "0.1"], "--baseline is needed"),
    (["--baseline", "0.5", "--difference", "0.1", "--spread", "-1"], "standard deviation"),
    (["--baseline", "0.5", "--difference", "0.1", "--episodes", "ten"], "comma-separated integers"),
    (["--baseline", "0.5", "--difference", "0.1", "--power", "1.5"], "--power between 0 and 1"),
    (["--difference", "0.1", "--bench", "/nonexistent"], "no readable results.json"),
])
def test_bad_plan_input_is_one_line_naming_the_fix(argv, message, capsys):
    assert main(["plan", *argv]) == 2
    assert message in capsys.readouterr().err


def test_bad_plan_calls_raise_a_physgen_error():
    with pytest.raises(PhysgenError, match="at least 2 seeds"):
        spread_from_rates([0.5], 10)
