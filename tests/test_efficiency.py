"""The sample-efficiency summary: real steps to a success target per seed, and their median interval."""

import math

import numpy as np
import pytest

from physgen.bench.efficiency import TARGET, efficiency_figure, efficiency_section, sample_efficiency
from physgen.stats import mean_interval, median_interval


def _unit(rates: list[float], returns: list[list[float]]) -> dict:
    return {"curve": [{"step": 100 * (i + 1), "success_rate": rate, "episodes": 4, "returns": r}
                      for i, (rate, r) in enumerate(zip(rates, returns))]}


def test_steps_to_the_target_per_seed_give_a_median_with_order_statistic_bounds(tmp_path):
    # seeds reach the target at 100 (3 seeds), 200 (4), 300 (1) steps, or never (2)
    firsts = [100] * 3 + [200] * 4 + [300] + [None] * 2
    rng = np.random.default_rng(0)
    returns = [[list(rng.normal(size=4)) for _ in range(3)] for _ in firsts]
    units = {"ppo": [_unit([1.0 if f is not None and 100 * (i + 1) >= f else 0.5 for i in range(3)], r)
                     for f, r in zip(firsts, returns)],
             "bc": [_unit([1.0] * 3, r) for r in returns]}
    efficiency = sample_efficiency(units, {"ppo": "real environment steps", "bc": "gradient steps"}, 0.95)
    assert set(efficiency) == {"ppo"}
    result = efficiency["ppo"]
    # sorted: 100 100 100 200 200 200 200 300 inf inf; with 10 seeds the 95% bounds are the 2nd and 9th
    assert result["steps_to_target"] == {"estimate": 200.0, "low": 100.0, "high": None}
    assert (result["reached"], result["seeds"]) == (8, 10)
    second = result["points"][1]
    assert second["success"]["estimate"] == pytest.approx((7 * 1.0 + 3 * 0.5) / 10)
    assert second["return"] == mean_interval([r[1] for r in returns]).as_dict()
    assert "| ppo | 200 [100, never] | 8 of 10 |" in efficiency_section(efficiency)
    assert efficiency_section({}) == []
    efficiency_figure(tmp_path, efficiency)
    assert (tmp_path / "sample_efficiency.png").stat().st_size > 10_000
    assert TARGET == 0.8


def test_median_interval_by_hand():
    # Binomial(10, 1/2): P(B <= 1) = 11/1024 <= 0.025 < P(B <= 2) = 56/1024, so j = 2: coverage 1 - 22/1024
    assert median_interval(np.arange(10, 0, -1)) == (5.5, 2.0, 9.0)
    assert median_interval([1, 2, 3, 4, 5, 6, 7, 8, math.inf, math.inf]) == (5.5, 2.0, math.inf)
    # 6 seeds: P(B < 1) = 1/64 <= 0.025, so the extremes; 5 seeds: 1/32 > 0.025, so no bound at all
    assert median_interval([6, 1, 5, 2, 4, 3]) == (3.5, 1.0, 6.0)
    assert median_interval([1, 2, 3, 4, 5]) == (3.0, -math.inf, math.inf)
    assert median_interval([1, 2, 3, 4, 5], confidence=0.9) == (3.0, 1.0, 5.0)  # 1/32 <= 0.05


def test_median_interval_covers_the_median_at_least_as_often_as_it_says():
    rng = np.random.default_rng(1)
    samples = rng.exponential(size=(4000, 10))  # true median log 2
    hits = [low <= math.log(2) <= high for _, low, high in map(median_interval, samples)]
    assert np.mean(hits) >= 0.97  # exact coverage 1 - 22/1024 = 0.9785; 4000 draws: sd 0.0023
