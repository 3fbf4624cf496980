"""Coverage of the report's intervals and of the ones they replaced, on simulated runs with a known truth
(physgen.plan: each seed's success rate from a Beta with the given log-odds spread, episodes Bernoulli).

    python benchmarks/coverage.py --json docs/results/coverage.json && python docs/generate.py
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from scipy import stats

from physgen.plan import simulate_counts
from physgen.stats import mean_bounds, rate_bounds

SEEDS, EPISODES, RATES, SPREADS = (3, 5, 10, 20), (10, 100), (0.05, 0.5, 0.9, 0.98), (0.3, 1.2)


def _covers(low, high, truth) -> float:
    return float(np.mean((low <= truth) & (truth <= high)))


def _percentile_bootstrap(rates: np.ndarray, rng: np.random.Generator, resamples: int = 1000):
    draws = rates[:, rng.integers(0, rates.shape[1], size=(resamples, rates.shape[1]))].mean(axis=2)
    return np.quantile(draws, 0.025, axis=1), np.quantile(draws, 0.975, axis=1)


def _pooled_wilson(counts: np.ndarray, episodes: int):
    trials, z2 = counts.shape[1] * episodes, stats.norm.ppf(0.975) ** 2
    pooled = counts.sum(axis=1) / trials
    centre = (pooled + z2 / (2 * trials)) / (1 + z2 / trials)
    half = np.sqrt(z2 * pooled * (1 - pooled) / trials + z2**2 / (4 * trials**2)) / (1 + z2 / trials)
    return centre - half, centre + half


def _t_interval(values: np.ndarray):
    """The t-interval over the seeds' means the returns had before, its variance no smaller than the episodes'."""
    seeds, episodes = values.shape[-2:]
    means = values.mean(axis=-1)
    within = values.var(axis=-1, ddof=1).mean(axis=-1) / (seeds * episodes)
    half = stats.t.ppf(0.975, seeds - 1) * np.sqrt(np.maximum(means.var(axis=-1, ddof=1) / seeds, within))
    return means.mean(axis=-1) - half, means.mean(axis=-1) + half


def _returns(rng: np.random.Generator, counts: np.ndarray, episodes: int) -> np.ndarray:
    """Normalised returns: a success scores 0.9-1.1, a failure 0-0.6 (mean 1.0 and 0.3)."""
    success = np.arange(episodes) < counts[..., None]
    return np.where(success, 0.9 + 0.2 * rng.random(success.shape), 0.6 * rng.random(success.shape))


def cell(seeds: int, episodes: int, rate: float, spread: float, runs: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    counts = simulate_counts(rng, runs, seeds, episodes, rate, spread)
    few = counts[: runs // 10]  # the bootstrap costs more: a tenth of the runs
    returns, truth = _returns(rng, counts, episodes), 0.3 + 0.7 * rate
    return {"seeds": seeds, "episodes": episodes, "rate": rate, "spread": spread, "runs": runs,
            "report": _covers(*rate_bounds(counts, episodes)[1:], rate),
            "pooled_wilson": _covers(*_pooled_wilson(counts, episodes), rate),
            "percentile_bootstrap": _covers(*_percentile_bootstrap(few / episodes, rng), rate),
            "returns": _covers(*mean_bounds(returns)[1:], truth), "returns_t": _covers(*_t_interval(returns), truth)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = [cell(s, e, r, spread, args.runs, seed=i) for i, (spread, s, e, r) in
            enumerate((spread, s, e, r) for spread in SPREADS for s in SEEDS for e in EPISODES for r in RATES)]
    for row in rows:
        print(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
