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


def episode_lengths(ended: np.ndarray, horizon: int) -> np.ndarray:
    """Steps of each recorded episode from its end flags (last axis): through its first end, or the whole horizon
    for one that never ends (argmax alone would give 1)."""
    return np.where(ended.any(-1), ended.argmax(-1) + 1, horizon)


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
    lengths = episode_lengths(term | trunc, task.horizon)
    return [
        Episode(obs[i, : n + 1], actions[i, :n], rewards[i, :n], term[i, :n], trunc[i, :n],
                {k: v[i, :n] for k, v in events.items()}, int(seeds[i]))
        for i, n in enumerate(lengths)
    ]


def rollout_gym(task: Task, policy: Callable[[np.ndarray], np.ndarray] | None, seed: int, episodes: int) -> list[Episode]:
    """Run a Gymnasium task's episodes in lockstep, one environment each.

    `policy` maps a batch of observations (episodes, obs_dim) to a batch of actions, called once per step on every
    episode (finished ones repeat their last observation, so the batch shape never changes); `policy=None` samples
    uniform random actions from each environment's seeded action space.
    """
    seeds = [int(s) for s in episode_seeds(seed, episodes)]
    envs = [task.make_env() for _ in seeds]
    obs = np.stack([env.reset(seed=s)[0] for env, s in zip(envs, seeds)])
    for env, s in zip(envs, seeds):
        env.action_space.seed(s)
    steps = [{"obs": [o], "action": [], "reward": [], "term": [], "trunc": [], **{k: [] for k in task.events}}
             for o in obs]
    live = np.ones(len(seeds), bool)
    while live.any():
        actions = None if policy is None else np.asarray(policy(obs))
        for i in np.nonzero(live)[0]:
            action = envs[i].action_space.sample() if actions is None else actions[i]
            obs[i], reward, terminated, truncated, info = envs[i].step(action)
            record = steps[i]
            for key, value in (("obs", obs[i].copy()), ("action", action), ("reward", reward),
                               ("term", terminated), ("trunc", truncated), *info["events"].items()):
                record[key].append(value)
            live[i] = not (terminated or truncated)
    for env in envs:
        env.close()
    return [Episode(np.asarray(r["obs"]), np.asarray(r["action"]), np.asarray(r["reward"]), np.asarray(r["term"]),
                    np.asarray(r["trunc"]), {k: np.asarray(r[k]) for k in task.events}, s)
            for r, s in zip(steps, seeds)]


def gym_lockstep(task: Task, episode_seeds: np.ndarray, rows: int, policy: Callable[[int, np.ndarray], np.ndarray]):
    """Step `rows` x len(`episode_seeds`) Gymnasium environments (row i, episode j starts from `episode_seeds[j]`)
    in lockstep: `policy(t, obs)` gets every current observation (rows, episodes, obs_dim), finished episodes
    repeating their last one, and returns every action (rows, episodes, act_dim).

    Returns (observations (rows, E, H + 1, obs_dim), actions, rewards, ended, events), padded to the horizon H
    with frozen copies as the pure-JAX rollouts are."""
    shape, horizon = (rows, len(episode_seeds)), task.horizon
    obs = np.zeros((*shape, horizon + 1, task.obs_dim), np.float32)
    actions = np.zeros((*shape, horizon, task.act_dim), np.float32)
    rewards = np.zeros((*shape, horizon), np.float32)
    ended = np.zeros((*shape, horizon), bool)
    events = {name: np.zeros((*shape, horizon), bool) for name in task.events}
    envs = [[task.make_env() for _ in episode_seeds] for _ in range(rows)]
    for row in envs:
        for j, env in enumerate(row):
            obs[:, j, 0] = env.reset(seed=int(episode_seeds[j]))[0]
    live = np.ones(shape, bool)
    for t in range(horizon):
        chosen = np.asarray(policy(t, obs[:, :, t]))
        obs[:, :, t + 1] = obs[:, :, t]
        for i, j in zip(*np.nonzero(live)):
            observation, reward, terminated, truncated, info = envs[i][j].step(chosen[i, j])
            obs[i, j, t + 1], actions[i, j, t], rewards[i, j, t] = observation, chosen[i, j], reward
            for name in task.events:
                events[name][i, j, t] = info["events"][name]
            if terminated or truncated:
                ended[i, j, t], live[i, j] = True, False
        if not live.any():
            obs[:, :, t + 2:] = obs[:, :, t + 1, None]
            break
    for row in envs:
        for env in row:
            env.close()
    return obs, actions, rewards, ended, events
