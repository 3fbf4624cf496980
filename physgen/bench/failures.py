"""Failure categories: one primary category per failed episode, chosen by which cause set in first, and the evidence.

The failure step is the first step where one of the task's failure events fires (`collision`, `fall`), or the
episode's end when none does. The candidate causes, each with its onset step:

- `action_saturation` (onset 0, saturated from the start): more than half of the action components executed before
  the failure lie within 1% of the range from a bound.
- the task's own detectors (`Task.failure_detectors`, such as fork's `mode_averaging`), each giving its onset step.
- `distribution_shift`: the state left the support of the training data (nearest-neighbour distance to the training
  states, normalised state space or a frame's pixels in [0, 1], beyond the 99th percentile of the validation
  states' distances, for `patience` consecutive states) at least 10% of the horizon before the failure step: long
  before failing, not while failing.

The primary category is the cause with the earliest onset (ties: the order above). Without a cause, the failure
happened in distribution and is named by when and how it happened:
`early_instability` (a failure event in the first 10% of the horizon), `long_horizon` (one in the second half), the
failure event itself (`collision`, `fall`) in between, `timeout` (no failure event, goal never reached, for tasks
with a `goal_reached` event), else `low_return` (survived the horizon, return below the task's bar).
docs/failures.md states the task detectors' rules and measures the categories on failures with known causes.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from physgen.envs import Task
from physgen.errors import PhysgenError

CAUSES = ("action_saturation", "distribution_shift")  # generic causes, checked with the task's detectors
SATURATION_MARGIN = 0.01
SATURATION_FRACTION = 0.5
EARLY_FRACTION = 0.1
LEAD_FRACTION = 0.1  # a shift counts as the cause when it began at least this share of the horizon before failing
OOD_QUANTILE = 0.99
PATIENCE = 3


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
    """Fit the out-of-distribution score on the dataset: at most `max_reference` training states (seeded), each
    feature standardised; camera frames (uint8) in pixel values scaled to [0, 1] alike."""
    frames = np.asarray(train_states).dtype == np.uint8
    train_states = np.asarray(train_states, np.float32)
    mean = train_states.mean(axis=0)
    # standardising each pixel would make a change of one level in a background pixel that the data never changes
    # a distance of millions, and every frame with the agent somewhere new out of support by it alone
    scale = np.full_like(mean, 255.0) if frames else np.maximum(train_states.std(axis=0), 1e-6)
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


class Trajectory(NamedTuple):
    """One recorded episode: `length` actions and steps of each event, `length + 1` observations and
    out-of-distribution scores (one per visited state)."""

    observations: np.ndarray
    actions: np.ndarray
    events: dict[str, np.ndarray]
    ood: np.ndarray
    length: int


class Diagnosis(NamedTuple):
    """The primary category of a failed episode and the evidence for it (JSON-ready)."""

    category: str
    evidence: dict


def task_categories(task: Task) -> tuple[str, ...]:
    """Every category the task's failures can get, in rule order: its own detectors', then the generic ones that
    apply to it (its failure events; `timeout` with a goal, else `low_return`)."""
    ending = "timeout" if "goal_reached" in task.events else "low_return"
    return (*task.failure_detectors, *CAUSES, "early_instability", "long_horizon", *task.failure_events, ending)


def saturated_share(actions: np.ndarray, low: np.ndarray, high: np.ndarray) -> float:
    """The share of action components within `SATURATION_MARGIN` of the range from a bound."""
    margin = SATURATION_MARGIN * (high - low)
    return float(((actions <= low + margin) | (actions >= high - margin)).mean())


def left_support_step(ood: np.ndarray, threshold: float, patience: int) -> int | None:
    """The first of `patience` consecutive states beyond the threshold, or None when there is no such run."""
    runs = np.convolve(ood > threshold, np.ones(patience), mode="valid") >= patience
    return int(runs.argmax()) if runs.any() else None


def _cause_onsets(task: Task, episode: Trajectory, step: int, left: int | None) -> dict[str, int]:
    """The onset step of every cause whose rule fires, earliest first (ties in rule order)."""
    onsets = {}
    if saturated_share(episode.actions[: max(step, 1)], task.action_space.low, task.action_space.high) \
            > SATURATION_FRACTION:
        onsets["action_saturation"] = 0
    for name, detector in task.failure_detectors.items():
        onset = detector(episode.observations, episode.actions, episode.events, episode.length)
        if onset is not None:
            onsets[name] = int(onset)
    if left is not None and step - left >= LEAD_FRACTION * task.horizon:
        onsets["distribution_shift"] = left
    return dict(sorted(onsets.items(), key=lambda item: item[1]))


def _in_distribution(task: Task, events: dict[str, np.ndarray], step: int, event: str | None) -> str:
    """The category of a failure no cause explains: by when and how it happened."""
    if event is not None:
        if step < EARLY_FRACTION * task.horizon:
            return "early_instability"
        return "long_horizon" if step >= task.horizon / 2 else event
    return "timeout" if "goal_reached" in events else "low_return"


def diagnose(task: Task, episode: Trajectory, threshold: float, patience: int = PATIENCE) -> Diagnosis:
    """The primary category of one failed episode and its evidence: failure step and event, the step the state left
    the support and its peak distance before failing (in units of the threshold), every cause's onset, and the
    statistics of the executed actions."""
    n = episode.length
    if len(episode.actions) < n or len(episode.ood) < n + 1 or len(episode.observations) < n + 1:
        raise PhysgenError(f"the trajectory is shorter than its length {n}: record {n} actions and {n + 1} "
                           "observations and out-of-distribution scores")
    episode = episode._replace(observations=episode.observations[: n + 1], actions=episode.actions[:n],
                               events={k: v[:n] for k, v in episode.events.items()}, ood=episode.ood[: n + 1])
    step, event = failure_step(episode.events, task.failure_events, n)
    left = left_support_step(episode.ood[: step + 1], threshold, patience)
    onsets = _cause_onsets(task, episode, step, left)
    category = next(iter(onsets), None) or _in_distribution(task, episode.events, step, event)
    executed = episode.actions[: max(step, 1)]
    evidence = {"failure_step": step, "failure_event": event, "onset_step": onsets.get(category, step),
                "causes": onsets, "left_support_step": left,
                "support_distance": float(episode.ood[: step + 1].max() / threshold),
                "saturated_share": saturated_share(executed, task.action_space.low, task.action_space.high),
                "action_mean": executed.mean(axis=0).round(4).tolist(),
                "action_std": executed.std(axis=0).round(4).tolist()}
    return Diagnosis(category, evidence)


def category_shares(categories: list[str]) -> dict[str, float]:
    """The share of each category among failures; empty when there were no failures."""
    return {name: categories.count(name) / len(categories) for name in dict.fromkeys(categories)}


def hidden_by_aggregates(success: dict[str, dict], categories: dict[str, list[str]], gap: float = 0.3) -> list[str]:
    """Pairs of methods whose success intervals overlap (an aggregate score cannot tell them apart) while their failure
    mixes differ by a total-variation distance of at least `gap`: what success or return alone would have hidden."""
    notes, names = [], sorted(success)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            overlap = success[a]["low"] <= success[b]["high"] and success[b]["low"] <= success[a]["high"]
            share_a, share_b = category_shares(categories[a]), category_shares(categories[b])
            if overlap and share_a and share_b:
                distance = 0.5 * sum(abs(share_a.get(c, 0.0) - share_b.get(c, 0.0)) for c in {*share_a, *share_b})
                if distance >= gap:
                    top_a, top_b = max(share_a, key=share_a.get), max(share_b, key=share_b.get)
                    notes.append(f"{a} and {b}: overlapping success intervals, but their failures differ "
                                 f"(total variation {distance:.2f}; mostly {top_a} vs {top_b})")
    return notes
