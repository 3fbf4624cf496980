"""Closed-loop evaluation of a chunking policy: receding horizon, T_a executed actions per sampled chunk.

Pure-JAX tasks run every episode of every seed in one compiled program (vmap over seeds and episodes, scan over
chunks and steps). The observation history starts as the first observation repeated, as the training windows pad.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from physgen.envs import Task
from physgen.envs.rollout import reset_key
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

    chunk_keys = jax.random.split(jax.random.fold_in(key, 2), chunks)
    _, (next_obs, actions, rewards, ended, events) = jax.lax.scan(run_chunk, (env_state, history), chunk_keys)
    flat = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:])[: task.horizon], (next_obs, actions, rewards, ended, events))
    next_obs, actions, rewards, ended, events = flat
    return jnp.concatenate([obs[None], next_obs]), actions, rewards, ended, events


def evaluate(task: Task, policy: Policy, states: PolicyState, episode_seeds: np.ndarray, steps: int | None = None,
             expert_return: float | None = None) -> Rollouts:
    """Roll out every seed's policy (states stacked on axis 0) on the same episodes (paired comparison)."""
    if task.functional is None:
        raise NotImplementedError(f"closed-loop evaluation of Gymnasium task {task.name!r} is not built yet")
    run = jax.jit(jax.vmap(jax.vmap(lambda st, s: _episode(task, policy, st, s, steps), in_axes=(None, 0)),
                           in_axes=(0, None)))
    obs, actions, rewards, ended, events = jax.device_get(run(states, jnp.asarray(episode_seeds)))
    lengths = np.where(ended.any(-1), ended.argmax(-1) + 1, task.horizon)
    returns = rewards.sum(-1)
    success = np.array([[task.success({k: v[i, j] for k, v in events.items()}, returns[i, j], lengths[i, j],
                                      expert_return) for j in range(lengths.shape[1])] for i in range(lengths.shape[0])])
    return Rollouts(obs, actions, rewards, events, lengths, returns, success)
