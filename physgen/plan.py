"""Simulated benchmark runs with a known truth: each seed's success rate drawn from a Beta around the method's rate,
its episodes Bernoulli at that rate. They measure how often an interval covers the truth (`coverage`) and how many
seeds and episodes a comparison needs (`physgen plan`: `seeds_needed`, `detectable_difference`).

The seeds' spread is the standard deviation of their success on the log-odds scale (0: every seed alike; 1.2: the
seeds of a method differ about as much as hopper's BC seeds did), so that it means the same near 0, 0.5 and 1."""

from __future__ import annotations

import numpy as np
from scipy import optimize, special

from physgen.errors import PhysgenError
from physgen.stats import difference_bounds, rate_bounds

RUNS = 2000
POWER = 0.8


def concentration(rate: float, spread: float) -> float:
    """The Beta concentration (a + b) whose log-odds standard deviation is `spread` (inf: no spread)."""
    if spread == 0 or min(rate, 1.0 - rate) < 1e-9:  # at 0 or 1 (up to rounding) every seed scores the same
        return np.inf

    def excess(log_kappa):
        kappa = np.exp(log_kappa)
        return special.polygamma(1, rate * kappa) + special.polygamma(1, (1 - rate) * kappa) - spread**2

    return float(np.exp(optimize.brentq(excess, -20.0, 40.0)))


def simulate_counts(rng: np.random.Generator, runs: int, seeds: int, episodes: int, rate: float,
                    spread: float) -> np.ndarray:
    """Successes per seed (runs, seeds) of simulated runs whose true mean success rate is `rate`."""
    rate = min(max(rate, 0.0), 1.0)  # baseline + difference may round past 1
    kappa = concentration(rate, spread)
    rates = np.full((runs, seeds), rate) if np.isinf(kappa) else rng.beta(rate * kappa, (1 - rate) * kappa,
                                                                            size=(runs, seeds))
    return rng.binomial(episodes, rates)


def spread_from_rates(rates, episodes: int) -> float:
    """The seeds' log-odds spread that their success rates imply (method of moments; 0 when they agree within
    episode noise)."""
    rates = np.asarray(rates, float)
    if rates.size < 2 or episodes < 2:
        raise PhysgenError(f"estimating the seeds' spread needs at least 2 seeds and 2 episodes each, got "
                           f"{rates.size} and {episodes}; pass --spread instead")
    mean = rates.mean()
    if mean in (0.0, 1.0):
        return 0.0
    between = (rates.var(ddof=1) - mean * (1 - mean) / episodes) / (1 - 1 / episodes)
    share = min(between / (mean * (1 - mean)), 0.99)  # above 0.99 the Beta degenerates to the two ends
    if share <= 0:
        return 0.0
    kappa = 1 / share - 1
    return float(np.sqrt(special.polygamma(1, mean * kappa) + special.polygamma(1, (1 - mean) * kappa)))


def coverage(seeds: int, episodes: int, rate: float, spread: float, confidence: float = 0.95, runs: int = RUNS,
             seed: int = 0) -> float:
    """Share of simulated runs whose `rate_bounds` interval contains the true rate."""
    counts = simulate_counts(np.random.default_rng(seed), runs, seeds, episodes, rate, spread)
    _, low, high = rate_bounds(counts, episodes, confidence)
    return float(np.mean((low <= rate) & (rate <= high)))


def power(baseline: float, difference: float, spread: float, seeds: int, episodes: int, confidence: float = 0.95,
          runs: int = RUNS, seed: int = 0) -> float:
    """Share of simulated comparisons (a method at baseline + difference against one at baseline, both with `seeds`
    seeds and `episodes` episodes) whose difference interval excludes 0 on the side of the true difference."""
    rng = np.random.default_rng(seed)
    better = simulate_counts(rng, runs, seeds, episodes, baseline + difference, spread)
    base = simulate_counts(rng, runs, seeds, episodes, baseline, spread)
    _, low, high = difference_bounds(better, base, episodes, confidence)
    return float(np.mean(low > 0) if difference > 0 else np.mean(high < 0))


def _check_plan(baseline: float, difference: float, spread: float) -> None:
    if not 0.0 <= baseline <= 1.0 or not 0.0 <= baseline + difference <= 1.0 or difference == 0:
        raise PhysgenError(f"need a baseline rate in [0, 1] and a non-zero difference keeping baseline + difference "
                           f"in [0, 1], got {baseline} and {difference}; e.g. --baseline 0.6 --difference 0.1")
    if spread < 0:
        raise PhysgenError(f"the seeds' spread is a standard deviation (log-odds), got {spread}; use e.g. 0.5")


def seeds_needed(baseline: float, difference: float, spread: float, episodes: int, target: float = POWER,
                 confidence: float = 0.95, most: int = 200, seed: int = 0) -> tuple[int | None, float]:
    """The fewest seeds per method (2..`most`, by bisection) whose comparison reaches power `target` with `episodes`
    episodes each, and that power; (None, power at `most`) when even `most` seeds fall short."""
    _check_plan(baseline, difference, spread)

    def at(seeds):
        return power(baseline, difference, spread, seeds, episodes, confidence, seed=seed)

    if at(most) < target:
        return None, at(most)
    low, high = 1, most  # power(low) < target <= power(high)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if at(middle) >= target else (middle, high)
    return high, at(high)


def detectable_difference(baseline: float, spread: float, seeds: int, episodes: int, target: float = POWER,
                          confidence: float = 0.95, seed: int = 0) -> float | None:
    """The smallest difference from `baseline`, up or down, that `seeds` x `episodes` per method detect with power
    `target` (to 0.01); None when no difference within [0, 1] does."""
    found = []
    for sign, room in ((1, 1.0 - baseline), (-1, baseline)):
        steps = int(np.floor(room * 100 + 1e-9))
        if steps == 0 or power(baseline, sign * steps / 100, spread, seeds, episodes, confidence, seed=seed) < target:
            continue
        low, high = 0, steps
        while high - low > 1:
            middle = (low + high) // 2
            strong = power(baseline, sign * middle / 100, spread, seeds, episodes, confidence, seed=seed) >= target
            low, high = (low, middle) if strong else (middle, high)
        found.append(high / 100)
    return min(found) if found else None


def checked_coverage(seeds: int, episodes: int, interval: dict, spread: float | None, confidence: float = 0.95,
                     seed: int = 0) -> float:
    """The lowest simulated coverage of `rate_bounds` at a run's seeds and episodes, for true rates at its interval's
    ends and estimate and seed spreads of 0.3, 1.2 and its own: how far that run's interval can be trusted."""
    spreads = {0.3, 1.2} | ({spread} if spread is not None else set())
    rates = (interval["low"], interval["estimate"], interval["high"])
    return min(coverage(seeds, episodes, rate, s, confidence, seed=seed) for rate in rates for s in spreads)
