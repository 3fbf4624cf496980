"""Seeded rollouts of whole episodes: pure-JAX tasks under `vmap` + `lax.scan`, Gymnasium tasks step by step.

Episode `i` of a rollout with seed `s` resets from `episode_seeds(s, n)[i]`, the same integer a Gymnasium user
passes to `env.reset(seed=...)` to get the same initial state.
"""

from __future__ import annotations

from functools import cache, partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from physgen.envs.base import Task


class Episode(NamedTuple):
    """One finished episode (numpy): T steps, T + 1 observations, per-step events."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminations: np.ndarray
    truncations: np.ndarray
    events: dict[str, np.ndarray]
    seed: int

    @property
    def length(self) -> int:
        return len(self.rewards)

    @property
    def episode_return(self) -> float:
        return float(np.sum(self.rewards, dtype=np.float64))


def episode_seeds(seed: int, episodes: int) -> np.ndarray:
    """Distinct 31-bit reset seeds for `episodes` episodes of a run seeded with `seed`."""
    return np.random.SeedSequence(seed).generate_state(episodes, np.uint32) >> 1


def reset_key(seed) -> jax.Array:
    """The PRNG key a pure-JAX task resets from, given an episode seed."""
    return jax.random.key(seed)


# A JAX policy maps (env state, observation, key) to an action; it may read the state (the scripted experts do).
JaxPolicy = Callable[[object, jax.Array, jax.Array], jax.Array]


@cache
def expert_policy(task: Task) -> JaxPolicy:
    return lambda state, obs, key: task.functional.expert(state, key)


@cache
def random_policy(task: Task) -> JaxPolicy:
    low, high = task.action_space.low, task.action_space.high
    return lambda state, obs, key: jax.random.uniform(key, low.shape, minval=low, maxval=high)


@partial(jax.jit, static_argnums=(0, 1))
def _scan_episodes(task: Task, policy: JaxPolicy, seeds: jax.Array):
    fns = task.functional

    def episode(seed):
        key = reset_key(seed)
        state, obs = fns.reset(key)

        def one_step(carry, step_key):
            state, obs = carry
            action = policy(state, obs, step_key)
            out = fns.step(state, action)
            return (out.state, out.obs), (out.obs, action, out.reward, out.terminated, out.truncated, out.events)

        step_keys = jax.random.split(jax.random.fold_in(key, 1), task.horizon)
        _, (next_obs, actions, rewards, term, trunc, events) = jax.lax.scan(one_step, (state, obs), step_keys)
        return jnp.concatenate([obs[None], next_obs]), actions, rewards, term, trunc, events

    return jax.vmap(episode)(seeds)


def rollout_jax(task: Task, policy: JaxPolicy, seed: int, episodes: int) -> list[Episode]:
    """Run `episodes` episodes of a pure-JAX task in one compiled program and cut each at its end."""
    seeds = episode_seeds(seed, episodes)
    obs, actions, rewards, term, trunc, events = jax.device_get(_scan_episodes(task, policy, jnp.asarray(seeds)))
    lengths = np.argmax(term | trunc, axis=1) + 1
    return [
        Episode(obs[i, : n + 1], actions[i, :n], rewards[i, :n], term[i, :n], trunc[i, :n],
                {k: v[i, :n] for k, v in events.items()}, int(seeds[i]))
        for i, n in enumerate(lengths)
    ]


def rollout_gym(task: Task, policy: Callable[[np.ndarray], np.ndarray] | None, seed: int, episodes: int) -> list[Episode]:
    """Run a Gymnasium task episode by episode; `policy=None` samples uniform random actions (seeded)."""
    env = task.make_env()
    result = []
    for episode_seed in episode_seeds(seed, episodes):
        episode_seed = int(episode_seed)
        env.action_space.seed(episode_seed)
        obs, _ = env.reset(seed=episode_seed)
        observations, actions, rewards, term, trunc = [obs], [], [], [], []
        events = {name: [] for name in task.events}
        done = False
        while not done:
            action = env.action_space.sample() if policy is None else policy(obs)
            obs, reward, terminated, truncated, info = env.step(action)
            observations.append(obs)
            actions.append(action)
            rewards.append(reward)
            term.append(terminated)
            trunc.append(truncated)
            for name in task.events:
                events[name].append(info["events"][name])
            done = terminated or truncated
        result.append(Episode(np.asarray(observations), np.asarray(actions), np.asarray(rewards), np.asarray(term),
                              np.asarray(trunc), {k: np.asarray(v) for k, v in events.items()}, episode_seed))
    env.close()
    return result
