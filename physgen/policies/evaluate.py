"""Closed-loop evaluation of a chunking policy: receding horizon, T_a executed actions per sampled chunk.

Pure-JAX tasks run every episode of every seed in one compiled program (vmap over seeds and episodes, scan over
chunks and steps); Gymnasium tasks step their environments in lockstep with one compiled sampler call per chunk for all of them.
Both compile once per (task, policy, steps) and are reused across calls. The observation
history starts as the first observation repeated, as the training windows pad.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from physgen.envs import Task
from physgen.envs.rollout import episode_lengths, gym_lockstep, reset_key
from physgen.policies.policy import Policy, PolicyState, act


class Rollouts(NamedTuple):
    """Per (seed, episode), numpy: padded to the horizon; steps past `lengths` are frozen copies."""

    observations: np.ndarray  # (S, E, H + 1, obs_dim)
    actions: np.ndarray  # (S, E, H, act_dim)
    rewards: np.ndarray  # (S, E, H)
    events: dict[str, np.ndarray]  # (S, E, H)
    lengths: np.ndarray  # (S, E)
    returns: np.ndarray  # (S, E)
    success: np.ndarray  # (S, E) bool


def _episode(task: Task, policy: Policy, state: PolicyState, seed, steps: int | None):
    fns, config = task.functional, policy.config
    key = reset_key(seed)
    env_state, obs = fns.reset(key)
    history = jnp.repeat(obs[None], config.obs_steps, axis=0)
    chunks = -(-task.horizon // config.exec_steps)

    def run_chunk(carry, chunk_key):
        env_state, history = carry
        actions = act(policy, state, history[None], chunk_key, steps)[0, : config.exec_steps]

        def run_step(carry, action):
            env_state, history = carry
            out = fns.step(env_state, action)
            history = jnp.concatenate([history[1:], out.obs[None]])
            return (out.state, history), (out.obs, action, out.reward, out.terminated | out.truncated, out.events)

        return jax.lax.scan(run_step, (env_state, history), actions)

    chunk_keys = jax.vmap(lambda c: jax.random.fold_in(jax.random.fold_in(key, 2), c * config.exec_steps))(
        jnp.arange(chunks))
    _, (next_obs, actions, rewards, ended, events) = jax.lax.scan(run_chunk, (env_state, history), chunk_keys)
    flat = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:])[: task.horizon], (next_obs, actions, rewards, ended, events))
    next_obs, actions, rewards, ended, events = flat
    return jnp.concatenate([obs[None], next_obs]), actions, rewards, ended, events


@partial(jax.jit, static_argnums=(0, 1, 4))
def _compiled_episodes(task: Task, policy: Policy, states: PolicyState, episode_seeds: jax.Array, steps: int | None):
    episodes = jax.vmap(lambda st, s: _episode(task, policy, st, s, steps), in_axes=(None, 0))
    return jax.vmap(episodes, in_axes=(0, None))(states, episode_seeds)


@partial(jax.jit, static_argnums=(0, 3))
def _sample_chunks(policy: Policy, states: PolicyState, histories: jax.Array, steps: int | None, keys: jax.Array):
    """Chunks (S, E, T_a, act_dim) for histories (S, E, T_o, obs_dim): seed i's policy on its row of episodes."""
    def one(state, history, key):
        return act(policy, state, history[None], key, steps)[0, : policy.config.exec_steps]

    return jax.vmap(jax.vmap(one, in_axes=(None, 0, 0)))(states, histories, keys)


def _gym_episodes(task: Task, policy: Policy, states: PolicyState, episode_seeds: np.ndarray, steps: int | None):
    """The same protocol stepped through the task's Gymnasium environment: every (seed, episode) in lockstep, one
    batched sampler call per T_a steps."""
    config = policy.config
    seeds = len(jax.tree.leaves(states)[0])
    chunk_keys = jax.vmap(lambda s: jax.random.fold_in(reset_key(s), 2))(jnp.asarray(episode_seeds))
    memory = {}

    def choose(t: int, obs: np.ndarray) -> np.ndarray:
        if t == 0:
            memory["history"] = np.repeat(obs[:, :, None], config.obs_steps, axis=2)
        else:
            memory["history"] = np.concatenate([memory["history"][:, :, 1:], obs[:, :, None]], axis=2)
        if t % config.exec_steps == 0:
            keys = jnp.broadcast_to(jax.vmap(lambda k: jax.random.fold_in(k, t))(chunk_keys),
                                    (seeds, len(episode_seeds)))
            memory["chunks"] = np.asarray(_sample_chunks(policy, states, jnp.asarray(memory["history"]), steps, keys))
        return memory["chunks"][:, :, t % config.exec_steps]

    return gym_lockstep(task, episode_seeds, seeds, choose)


def evaluate(task: Task, policy: Policy, states: PolicyState, episode_seeds: np.ndarray, steps: int | None = None,
             expert_return: float | None = None) -> Rollouts:
    """Roll out every seed's policy (states stacked on axis 0) on the same episodes (paired comparison)."""
    if task.functional is None:
        recorded = _gym_episodes(task, policy, states, episode_seeds, steps)
    else:
        recorded = jax.device_get(_compiled_episodes(task, policy, states, jnp.asarray(episode_seeds), steps))
    return scored(task, *recorded, expert_return)


def scored(task: Task, obs, actions, rewards, ended, events, expert_return: float | None) -> Rollouts:
    """Rollouts from padded recordings (seeds, episodes, ...): lengths, returns and the task's success rule."""
    lengths = episode_lengths(ended, task.horizon)
    returns = rewards.sum(-1)
    success = np.array([[task.success({k: v[i, j] for k, v in events.items()}, returns[i, j], lengths[i, j],
                                      expert_return) for j in range(lengths.shape[1])] for i in range(lengths.shape[0])])
    return Rollouts(obs, actions, rewards, events, lengths, returns, success)
