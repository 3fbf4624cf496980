"""Benchmark statistics over seeds, rliable style: IQM, percentile-bootstrap and Wilson intervals, P(X > Y)."""

from typing import NamedTuple

import numpy as np
from scipy import stats

from physgen.errors import PhysgenError

_STATISTICS = ("mean", "iqm")


class Interval(NamedTuple):
    """A point estimate with the low and high ends of its confidence interval."""

    estimate: float
    low: float
    high: float

    def as_dict(self) -> dict:
        """The interval as plain JSON-serialisable floats."""
        return {"estimate": float(self.estimate), "low": float(self.low), "high": float(self.high)}


def _values(values, name: str = "values", ndim: int = 1) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != ndim or array.size == 0:
        layout = "one score per seed" if ndim == 1 else "one row per seed and one column per episode"
        raise PhysgenError(f"{name} must be a non-empty {ndim}-D array, got shape {array.shape}; pass {layout}")
    if not np.isfinite(array).all():
        raise PhysgenError(f"{name} contains NaN or infinite entries; drop or fix those episodes before summarizing")
    return array


def _check(confidence: float, resamples: int = 1) -> None:
    if not isinstance(resamples, (int, np.integer)) or resamples < 1:
        raise PhysgenError(f"resamples must be an integer >= 1, got {resamples!r}; use e.g. 10_000")
    if not 0.0 < confidence < 1.0:
        raise PhysgenError(f"confidence must lie strictly between 0 and 1, got {confidence!r}; use e.g. 0.95")


def _percentiles(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(samples, [tail, 1.0 - tail])
    return float(low), float(high)


def _iqm(samples: np.ndarray, axis: int = -1) -> np.ndarray:
    return stats.trim_mean(samples, 0.25, axis=axis)


def iqm(values) -> float:
    """Interquartile mean: the mean of the middle 50% of the values (`scipy.stats.trim_mean(values, 0.25)`)."""
    return float(_iqm(_values(values)))


def bootstrap_interval(values, statistic: str = "mean", resamples: int = 10_000, confidence: float = 0.95,
                       seed: int = 0) -> Interval:
    """`statistic` ("mean" or "iqm") of per-seed `values` with a percentile-bootstrap interval over seeds."""
    if statistic not in _STATISTICS:
        raise PhysgenError(f"unknown statistic {statistic!r}; use one of {', '.join(_STATISTICS)}")
    array = _values(values)
    _check(confidence, resamples)
    function = np.mean if statistic == "mean" else _iqm
    draws = np.random.default_rng(seed).integers(0, array.size, size=(resamples, array.size))
    return Interval(float(function(array)), *_percentiles(function(array[draws], axis=1), confidence))


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> Interval:
    """Success rate `successes / trials` with its Wilson score interval."""
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


def _improvement(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X > Y) + 0.5 P(X = Y) along the last axis, from mid-ranks (Mann-Whitney U / (n m))."""
    n, m = x.shape[-1], y.shape[-1]
    ranks = stats.rankdata(np.concatenate([x, y], axis=-1), axis=-1)[..., :n]
    return (ranks.sum(axis=-1) - n * (n + 1) / 2.0) / (n * m)


def probability_of_improvement(x, y, resamples: int = 10_000, confidence: float = 0.95, seed: int = 0) -> Interval:
    """P(X > Y) of per-seed scores `x` over `y`, with a bootstrap interval resampling each method's seeds."""
    x, y = _values(x, "x"), _values(y, "y")
    _check(confidence, resamples)
    rng = np.random.default_rng(seed)
    xs = x[rng.integers(0, x.size, size=(resamples, x.size))]
    ys = y[rng.integers(0, y.size, size=(resamples, y.size))]
    return Interval(float(_improvement(x, y)), *_percentiles(_improvement(xs, ys), confidence))


def summarize(per_seed_success, normalized_returns=None, seed: int = 0, resamples: int = 10_000,
              confidence: float = 0.95) -> dict:
    """Success rates per seed, their mean and IQM intervals, the pooled Wilson interval and the normalised return."""
    success = _values(per_seed_success, "per_seed_success", ndim=2)
    if not np.isin(success, (0.0, 1.0)).all():
        raise PhysgenError("per_seed_success must hold booleans (or 0/1); pass the success flag of every episode")
    rates = success.mean(axis=1)
    kwargs = {"resamples": resamples, "confidence": confidence, "seed": seed}
    summary = {
        "per_seed_success": [float(rate) for rate in rates],
        "success_mean": bootstrap_interval(rates, "mean", **kwargs).as_dict(),
        "success_iqm": bootstrap_interval(rates, "iqm", **kwargs).as_dict(),
        "success_pooled": wilson_interval(int(success.sum()), success.size, confidence).as_dict(),
        "normalized_return": None,
        "resamples": int(resamples),
        "confidence": float(confidence),
        "seed": int(seed),
    }
    if normalized_returns is not None:
        returns = _values(normalized_returns, "normalized_returns", ndim=2)
        if returns.shape[0] != success.shape[0]:
            raise PhysgenError(f"normalized_returns has {returns.shape[0]} seeds but per_seed_success has "
                               f"{success.shape[0]}; pass one row per seed to both")
        summary["normalized_return"] = bootstrap_interval(returns.mean(axis=1), "mean", **kwargs).as_dict()
    return summary
