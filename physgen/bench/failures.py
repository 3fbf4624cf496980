"""Failure categories: exactly one per failed episode, from rules evaluated in a fixed order on its recorded trajectory.

The failure step is the first step where one of the task's failure events fires (`collision`, `fall`), or the
episode's end when none does. Rules, first match wins:

1. `action_saturation`: more than half of the executed action components lie within 1% of the range from a bound.
2. `distribution_shift`: before the failure step the state left the support of the training data for
   `patience` consecutive steps: its nearest-neighbour distance to the training states (normalised state space)
   exceeded the 99th percentile of the validation states' distances.
3. `early_instability`: a failure event in the first 10% of the horizon.
4. `long_horizon`: a failure event in the second half of the horizon, in distribution (compounding error).
5. the failure event itself (`collision`, `fall`): a failure event in between.
6. `timeout`: no failure event and the goal never reached (tasks with a `goal_reached` event).
7. `low_return`: no failure event, the whole horizon survived, the return below the task's bar.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

CATEGORIES = ("action_saturation", "distribution_shift", "early_instability", "long_horizon", "collision", "fall",
              "timeout", "low_return")
SATURATION_MARGIN = 0.01
SATURATION_FRACTION = 0.5
EARLY_FRACTION = 0.1
OOD_QUANTILE = 0.99


class StateSupport(NamedTuple):
    """The training states (normalised, subsampled) and the distance beyond which a state is out of distribution."""

    reference: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    threshold: float


@jax.jit
def _nearest_distances(queries: jax.Array, reference: jax.Array) -> jax.Array:
    ref_sq = jnp.sum(reference**2, axis=1)

    def block(q):
        squared = jnp.sum(q**2, axis=1)[:, None] + ref_sq[None] - 2.0 * q @ reference.T
        return jnp.sqrt(jnp.maximum(squared.min(axis=1), 0.0))

    return jax.lax.map(block, queries)


def nearest_distances(support: StateSupport, states: np.ndarray, block: int = 512) -> np.ndarray:
    """Distance from each state (any leading shape, last axis the state) to its nearest training state."""
    flat = ((np.asarray(states, np.float32) - support.mean) / support.scale).reshape(-1, support.reference.shape[1])
    padded = np.zeros((-(-len(flat) // block) * block, flat.shape[1]), np.float32)
    padded[: len(flat)] = flat
    distances = np.asarray(_nearest_distances(padded.reshape(-1, block, flat.shape[1]), support.reference))
    return distances.reshape(-1)[: len(flat)].reshape(np.shape(states)[:-1])


def fit_support(train_states: np.ndarray, validation_states: np.ndarray, seed: int = 0,
                max_reference: int = 20_000) -> StateSupport:
    """Fit the out-of-distribution score on the dataset: at most `max_reference` training states (seeded)."""
    train_states = np.asarray(train_states, np.float32)
    mean, scale = train_states.mean(axis=0), np.maximum(train_states.std(axis=0), 1e-6)
    rng = np.random.default_rng(seed)
    keep = rng.choice(len(train_states), min(max_reference, len(train_states)), replace=False)
    reference = (train_states[np.sort(keep)] - mean) / scale
    support = StateSupport(reference, mean, scale, 0.0)
    threshold = float(np.quantile(nearest_distances(support, validation_states), OOD_QUANTILE))
    return support._replace(threshold=threshold)


def failure_step(events: dict[str, np.ndarray], failure_events: tuple[str, ...], length: int) -> tuple[int, str | None]:
    """(step index, event name) of the first failure event, or (length, None) when none fired."""
    fired = np.stack([np.asarray(events[name][:length], bool) for name in failure_events] or [np.zeros(length, bool)])
    if not fired.any():
        return length, None
    step = int(fired.any(axis=0).argmax())
    return step, failure_events[int(fired[:, step].argmax())]


def categorize(actions: np.ndarray, events: dict[str, np.ndarray], ood: np.ndarray, length: int, horizon: int,
               failure_events: tuple[str, ...], low: np.ndarray, high: np.ndarray, threshold: float,
               patience: int = 3) -> str:
    """The category of one failed episode; arrays cover its `length` steps (`ood` one per visited state)."""
    step, event = failure_step(events, failure_events, length)
    margin = SATURATION_MARGIN * (high - low)
    executed = actions[: max(step, 1)]
    pinned = (executed <= low + margin) | (executed >= high - margin)
    if pinned.mean() > SATURATION_FRACTION:
        return "action_saturation"
    outside = np.convolve(ood[: step + 1] > threshold, np.ones(patience), mode="valid")
    if np.any(outside >= patience):
        return "distribution_shift"
    if event is not None:
        if step < EARLY_FRACTION * horizon:
            return "early_instability"
        return "long_horizon" if step >= horizon / 2 else event
    if "goal_reached" in events:
        return "timeout"
    return "low_return"


def category_shares(categories: list[str]) -> dict[str, float]:
    """The share of each category among failures (zero where absent); empty when there were no failures."""
    if not categories:
        return {}
    return {name: categories.count(name) / len(categories) for name in CATEGORIES}


def hidden_by_aggregates(success: dict[str, dict], categories: dict[str, list[str]], gap: float = 0.3) -> list[str]:
    """Pairs of methods whose success intervals overlap (an aggregate score cannot tell them apart) while their failure
    mixes differ by a total-variation distance of at least `gap`: what success or return alone would have hidden."""
    notes, names = [], sorted(success)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            overlap = success[a]["low"] <= success[b]["high"] and success[b]["low"] <= success[a]["high"]
            share_a, share_b = category_shares(categories[a]), category_shares(categories[b])
            if overlap and share_a and share_b:
                distance = 0.5 * sum(abs(share_a[c] - share_b[c]) for c in CATEGORIES)
                if distance >= gap:
                    top_a, top_b = max(share_a, key=share_a.get), max(share_b, key=share_b.get)
                    notes.append(f"{a} and {b}: overlapping success intervals, but their failures differ "
                                 f"(total variation {distance:.2f}; mostly {top_a} vs {top_b})")
    return notes
