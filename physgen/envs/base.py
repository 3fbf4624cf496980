"""What a task declares: spaces, control rate, horizon, success rule, events, rendering and expert source."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

import gymnasium as gym
import jax
import numpy as np


class TimeStep(NamedTuple):
    """The result of one pure-JAX `step`: the new state and what the agent sees of it."""

    state: Any
    obs: jax.Array
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    events: dict[str, jax.Array]


class FunctionalEnv(NamedTuple):
    """A pure-JAX task: every function is jittable and vmappable.

    reset(key) -> (state, obs)
    step(state, action) -> TimeStep (a finished episode stays frozen: zero reward, same state)
    expert(state, key) -> action (the scripted demonstrator; may read hidden state such as its chosen route)
    render(state, size) -> uint8 RGB frame (size, size, 3), jittable and vmappable with `size` static
    """

    reset: Callable
    step: Callable
    expert: Callable
    render: Callable


# detector(observations (length + 1, obs_dim), actions (length, act_dim), events {name: (length,)}, length) -> the
# step a failed episode's cause set in, or None where the cause does not apply
FailureDetector = Callable[[np.ndarray, np.ndarray, Mapping[str, np.ndarray], int], "int | None"]


# Sizes every task starts from; a task's recipe changes what works for it.
STANDARD_POLICY_BUDGETS = {
    "smoke": {"steps": 100, "batch_size": 64, "hidden": 64},
    "quick": {"steps": 2_000, "batch_size": 128, "hidden": 256},
    "full": {"steps": 10_000, "batch_size": 256, "hidden": 256},
}


@dataclass(frozen=True)
class Recipe:
    """A task's default settings for the offline policies, chosen by measurement (docs/recipes.md), as values of
    `physgen.policies.policy.PolicyConfig` fields: `policy` for every method, `methods` for one method, `budgets`
    for one budget (smoke, quick, full: gradient steps, batch, network width), `method_budgets` for one method on
    one budget. Later ones override earlier ones."""

    policy: Mapping[str, Any] = field(default_factory=dict)
    methods: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    budgets: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: STANDARD_POLICY_BUDGETS)
    method_budgets: Mapping[tuple[str, str], Mapping[str, Any]] = field(default_factory=dict)

    def settings(self, method: str, budget: str) -> dict[str, Any]:
        """The PolicyConfig field values of `method` trained on `budget`."""
        return {**self.policy, **self.methods.get(method, {}), **self.budgets[budget],
                **self.method_budgets.get((method, budget), {})}

    def as_dict(self) -> dict[str, Any]:
        return {"policy": dict(self.policy), "methods": {m: dict(v) for m, v in self.methods.items()},
                "budgets": {b: dict(v) for b, v in self.budgets.items()},
                "method_budgets": {f"{m} on {b}": dict(v) for (m, b), v in self.method_budgets.items()}}


@dataclass(frozen=True, eq=False)
class Task:
    """Everything the rest of physgen needs to know about a task.

    `events` names the per-step booleans recorded in datasets and used for failure analysis, `failure_events` those
    of them that end an episode as a failure;
    `make_env(render_mode=None)` builds the Gymnasium environment (`gym_id`), whose `info["events"]` holds them;
    `success(events, episode_return, length, expert_return)` applies the documented success rule to one episode.
    `failure_detectors` name the task's own failure causes (docs/failures.md), each a `FailureDetector`; they read
    the observations, or where `detector_observations(episode_seeds, actions)` is set, the observations it replays
    along the recorded episodes (an image task's detectors read the state vectors behind its frames).
    Demonstrations come from `functional.expert` (pure-JAX tasks: `expert(state, key)` acts in one episode and is
    vmapped over episodes) or from `demonstrators` by name such as "expert" (Gymnasium tasks): factories of
    observation -> action callables, or paths of PPO checkpoints (hopper's shipped experts), which dataset generation
    loads with the loader it is given (tasks sit below policies). A demonstrator is called once per step with the
    observations of every episode recorded in lockstep, shape (batch, obs_dim), and returns actions (batch, act_dim);
    with `demonstrator_batched=False` it is called once per running episode with one observation (obs_dim,) and
    returns one action (act_dim,). Another shape is refused with an error naming the demonstrator.
    `physgen data` writes one dataset per name in `datasets` by default, each of `dataset_episodes` episodes.
    `recipe` holds the policy settings that work on the task, which `physgen bench` trains with.
    """

    name: str
    summary: str
    observation_space: gym.spaces.Box
    action_space: gym.spaces.Box
    control_hz: float
    horizon: int
    success_rule: str
    events: tuple[str, ...]
    demonstrations: str
    gym_id: str
    make_env: Callable[..., gym.Env]
    success: Callable[[dict[str, np.ndarray], float, int, float | None], bool]
    failure_events: tuple[str, ...] = ()
    failure_detectors: Mapping[str, FailureDetector] = field(default_factory=dict)
    detector_observations: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
    functional: FunctionalEnv | None = None
    demonstrators: Mapping[str, Callable[[], Callable[[np.ndarray], np.ndarray]] | Path] = field(default_factory=dict)
    demonstrator_batched: bool = True
    datasets: tuple[str, ...] = ("expert",)
    dataset_episodes: int = 1000
    recipe: Recipe = field(default_factory=Recipe)

    @property
    def obs_dim(self) -> int:
        return int(self.observation_space.shape[0])

    @property
    def act_dim(self) -> int:
        return int(self.action_space.shape[0])


def box(low, high, dim: int) -> gym.spaces.Box:
    return gym.spaces.Box(low=np.float32(low), high=np.float32(high), shape=(dim,), dtype=np.float32)
