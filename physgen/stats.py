"""Benchmark statistics over training seeds. The report's intervals (`rate_interval`, `mean_interval`,
`difference_interval`, `probability_of_improvement`) are the ones whose coverage `benchmarks/coverage.py` measures
on simulated runs with a known truth (docs/intervals.md); `wilson_interval` serves independent trials (the episodes
of one checkpoint) and `seed_t_interval` a score per seed outside the report's tables (the RSSM's open-loop error)."""

from typing import NamedTuple

import numpy as np
from scipy import special, stats

from physgen.errors import PhysgenError

class Interval(NamedTuple):
    """A point estimate with the low and high ends of its confidence interval."""

    estimate: float
    low: float
    high: float

    def as_dict(self) -> dict:
        """The interval as plain JSON-serialisable floats."""
        return {"estimate": float(self.estimate), "low": float(self.low), "high": float(self.high)}


def interval_text(interval: dict, digits: int = 2) -> str:
    """An interval's `as_dict` as the reports print it: `0.87 [0.72, 0.96]`."""
    return f"{interval['estimate']:.{digits}f} [{interval['low']:.{digits}f}, {interval['high']:.{digits}f}]"


def _values(values, name: str = "values", ndim: int = 1) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != ndim or array.size == 0:
        layout = "one score per seed" if ndim == 1 else "one row per seed and one column per episode"
        raise PhysgenError(f"{name} must be a non-empty {ndim}-D array, got shape {array.shape}; pass {layout}")
    if not np.isfinite(array).all():
        raise PhysgenError(f"{name} contains NaN or infinite entries; drop or fix those episodes before summarizing")
    return array


def _check(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise PhysgenError(f"confidence must lie strictly between 0 and 1, got {confidence!r}; use e.g. 0.95")


def _interval(bounds, *args, confidence: float) -> Interval:
    """`bounds(*args, confidence)` as an `Interval` of floats, the confidence checked first."""
    _check(confidence)
    return Interval(*(float(v) for v in bounds(*args, confidence)))


def _counts(counts, episodes: int, name: str = "counts") -> np.ndarray:
    array = _values(counts, name)
    if not isinstance(episodes, (int, np.integer)) or episodes < 1:
        raise PhysgenError(f"episodes must be an integer >= 1, got {episodes!r}; pass the episodes per seed")
    if (array != np.round(array)).any() or array.min() < 0 or array.max() > episodes:
        raise PhysgenError(f"{name} must be whole numbers of episodes between 0 and {episodes}, got {array.tolist()}; "
                           "pass each seed's number of successes")
    return array


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> Interval:
    """Success rate `successes / trials` with its Wilson score interval: independent trials, such as the episodes of
    one checkpoint (episodes of several training seeds are not independent: use `rate_interval`)."""
    if trials < 1 or not 0 <= successes <= trials:
        raise PhysgenError(f"need 0 <= successes <= trials and trials >= 1, got {successes}/{trials}; "
                           "evaluate at least one episode")
    _check(confidence)
    z = stats.norm.ppf(0.5 + confidence / 2.0)
    rate = successes / trials
    scale = 1.0 + z**2 / trials
    centre = (rate + z**2 / (2 * trials)) / scale
    half = z * np.sqrt(rate * (1.0 - rate) / trials + z**2 / (4 * trials**2)) / scale
    return Interval(float(rate), float(max(centre - half, 0.0)), float(min(centre + half, 1.0)))


def seed_t_interval(values, confidence: float = 0.95) -> Interval:
    """Mean of one score per seed with a t-interval over the seeds (one seed: no spread to measure, a point)."""
    array = _values(values)
    _check(confidence)
    mean = float(array.mean())
    if array.size < 2:
        return Interval(mean, mean, mean)
    return Interval(mean, *stats.t.interval(confidence, array.size - 1, loc=mean, scale=stats.sem(array)))


def rate_bounds(counts, episodes: int, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean success rate over seeds (seeds on the last axis of `counts`, successes out of `episodes` each) and its
    Clopper-Pearson interval at Korn and Graubard's effective sample size: all episodes shrunk by the design effect
    the seeds' spread implies, then by (z / t_{seeds-1})^2 for estimating it from a few seeds. Never beyond the
    episodes themselves: when every seed scores the same the interval is the episodes' (no collapse to a point)."""
    counts = np.asarray(counts, float)
    seeds, tail = counts.shape[-1], (1.0 - confidence) / 2.0
    trials = seeds * episodes
    rates = counts / episodes
    mean = rates.mean(axis=-1)
    variance = rates.var(axis=-1, ddof=1) / seeds if seeds > 1 else np.zeros_like(mean)
    with np.errstate(divide="ignore", invalid="ignore"):
        effective = np.where(variance > 0, mean * (1.0 - mean) / variance, trials)
    if seeds > 1:
        effective = np.minimum(effective, trials) * (stats.norm.ppf(1 - tail) / stats.t.ppf(1 - tail, seeds - 1)) ** 2
    x = mean * effective
    with np.errstate(divide="ignore", invalid="ignore"):
        low = np.where(x > 0, special.betaincinv(x, effective - x + 1, tail), 0.0)
        high = np.where(x < effective, special.betaincinv(x + 1, effective - x, 1.0 - tail), 1.0)
    return mean, low, high


def rate_interval(counts, episodes: int, confidence: float = 0.95) -> Interval:
    """Mean success (or any per-episode event) rate over seeds from each seed's count out of `episodes`."""
    return _interval(rate_bounds, _counts(counts, episodes), episodes, confidence=confidence)


def median_interval(values, confidence: float = 0.95) -> Interval:
    """Median of per-seed `values` (inf allowed: a seed that never got there) with the distribution-free interval
    between order statistics, [x_(j), x_(n+1-j)] for the largest j with P(Binomial(n, 1/2) < j) <= (1 -
    confidence) / 2: its coverage is at least `confidence` whatever the distribution, censored values included. With
    too few seeds for one (5 or fewer at 95%), the interval is the whole line."""
    array = np.sort(np.asarray(values, float))
    if array.ndim != 1 or array.size == 0 or np.isnan(array).any():
        raise PhysgenError(f"values must be a non-empty list of numbers (inf allowed), got {values!r}")
    _check(confidence)
    n = array.size
    below = stats.binom.cdf(np.arange(n), n, 0.5)  # below[j - 1] = P(Binomial(n, 1/2) < j)
    fits = np.flatnonzero(below[: (n + 1) // 2] <= (1 - confidence) / 2)
    if fits.size == 0:
        return Interval(float(np.median(array)), -np.inf, np.inf)
    j = int(fits[-1]) + 1
    return Interval(float(np.median(array)), float(array[j - 1]), float(array[n - j]))


def mean_bounds(values, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean of per-episode `values` (..., seeds, episodes), e.g. returns, with the rates' interval (`rate_bounds`) on
    the values rescaled to [0, 1] by their smallest and largest. A t-interval over the seeds' means under-covers
    where a few seeds fail far below the rest (its symmetric tails ignore the skew; docs/intervals.md measures it);
    the beta shape the rates' interval takes near a bound follows it, and all episodes remain its floor."""
    values = np.asarray(values, float)
    low = values.min(axis=(-2, -1), keepdims=True)
    span = values.max(axis=(-2, -1), keepdims=True) - low
    span = np.where(span > 0, span, 1.0)
    scaled = ((values - low) / span).sum(axis=-1)
    low, span = low[..., 0, 0], span[..., 0, 0]
    return tuple(low + span * bound for bound in rate_bounds(scaled, values.shape[-1], confidence))


def mean_interval(values, confidence: float = 0.95) -> Interval:
    """Mean over seeds of per-episode `values` (one row per seed, one column per episode), e.g. returns."""
    return _interval(mean_bounds, _values(values, ndim=2), confidence=confidence)


def difference_bounds(counts_x, counts_y, episodes: int, confidence: float = 0.95):
    """Difference of two methods' mean success rates over the same evaluation episodes, with the interval Newcombe's
    square-and-add (MOVER) builds from each method's `rate_bounds`; the methods' seeds train independently."""
    x, x_low, x_high = rate_bounds(counts_x, episodes, confidence)
    y, y_low, y_high = rate_bounds(counts_y, episodes, confidence)
    return (x - y, x - y - np.hypot(x - x_low, y_high - y), x - y + np.hypot(x_high - x, y - y_low))


def difference_interval(counts_x, counts_y, episodes: int, confidence: float = 0.95) -> Interval:
    """Success rate of method x minus method y, both evaluated on the same `episodes` episodes per seed."""
    x, y = _counts(counts_x, episodes, "counts_x"), _counts(counts_y, episodes, "counts_y")
    return _interval(difference_bounds, x, y, episodes, confidence=confidence)


def _improvement(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X > Y) + 0.5 P(X = Y) along the last axis, from mid-ranks (Mann-Whitney U / (n m))."""
    n, m = x.shape[-1], y.shape[-1]
    ranks = stats.rankdata(np.concatenate([x, y], axis=-1), axis=-1)[..., :n]
    return (ranks.sum(axis=-1) - n * (n + 1) / 2.0) / (n * m)


def improvement_bounds(x, y, confidence: float = 0.95, steps: int = 50):
    """P(X > Y) of per-seed scores (last axis) with Newcombe's score interval: the values of theta whose
    Hanley-McNeil variance keeps the estimate within z standard errors (bisection: it has no closed form)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    n, m = x.shape[-1], y.shape[-1]
    estimate = _improvement(x, y)
    z2 = stats.norm.ppf(0.5 + confidence / 2.0) ** 2

    def outside(theta):  # Hanley and McNeil's variance of the estimate at theta, both groups of size (n + m) / 2
        size = (n + m) / 2.0
        variance = theta * (1 - theta) * (1 + (size - 1) * ((1 - theta) / (2 - theta) + theta / (1 + theta))) / (n * m)
        return (estimate - theta) ** 2 > z2 * variance

    ends = []
    for far in (np.zeros_like(estimate), np.ones_like(estimate)):
        out, inside = far, estimate.copy()  # `out` is outside the interval (or the bound 0 or 1), `inside` within
        for _ in range(steps):
            middle = (out + inside) / 2
            rejected = outside(middle)
            out, inside = np.where(rejected, middle, out), np.where(rejected, inside, middle)
        ends.append(inside)
    return estimate, ends[0], ends[1]


def probability_of_improvement(x, y, confidence: float = 0.95) -> Interval:
    """P(X > Y) + 0.5 P(X = Y): the chance that a seed of x scores above a seed of y, with its score interval."""
    return _interval(improvement_bounds, _values(x, "x"), _values(y, "y"), confidence=confidence)


def summarize(per_seed_success, normalized_returns=None, confidence: float = 0.95) -> dict:
    """Success rates per seed and their mean with `rate_interval`; the normalised return with `mean_interval`."""
    success = _values(per_seed_success, "per_seed_success", ndim=2)
    if not np.isin(success, (0.0, 1.0)).all():
        raise PhysgenError("per_seed_success must hold booleans (or 0/1); pass the success flag of every episode")
    _check(confidence)
    summary = {
        "per_seed_success": [float(rate) for rate in success.mean(axis=1)],
        "success_mean": rate_interval(success.sum(axis=1), success.shape[1], confidence).as_dict(),
        "normalized_return": None,
        "confidence": float(confidence),
    }
    if normalized_returns is not None:
        returns = _values(normalized_returns, "normalized_returns", ndim=2)
        if returns.shape[0] != success.shape[0]:
            raise PhysgenError(f"normalized_returns has {returns.shape[0]} seeds but per_seed_success has "
                               f"{success.shape[0]}; pass one row per seed to both")
        summary["normalized_return"] = mean_interval(returns, confidence).as_dict()
    return summary
