"""Closed-loop evaluation of a chunking policy: receding horizon, T_a executed actions per sampled chunk.

Pure-JAX tasks run every episode of every seed in one compiled program (vmap over seeds and episodes, scan over
chunks and steps); Gymnasium tasks step their environment with one compiled sampler call per chunk. The observation
history starts as the first observation repeated, as the training windows pad.
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

    chunk_keys = jax.vmap(lambda c: jax.random.fold_in(jax.random.fold_in(key, 2), c * config.exec_steps))(
        jnp.arange(chunks))
    _, (next_obs, actions, rewards, ended, events) = jax.lax.scan(run_chunk, (env_state, history), chunk_keys)
    flat = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:])[: task.horizon], (next_obs, actions, rewards, ended, events))
    next_obs, actions, rewards, ended, events = flat
    return jnp.concatenate([obs[None], next_obs]), actions, rewards, ended, events


def _gym_episodes(task: Task, policy: Policy, states: PolicyState, episode_seeds: np.ndarray, steps: int | None):
    """The same protocol stepped through the task's Gymnasium environment, one chunk sample per T_a steps."""
    config, horizon = policy.config, task.horizon
    sample = jax.jit(lambda st, history, key: act(policy, st, history[None], key, steps)[0, : config.exec_steps])
    shape = (len(jax.tree.leaves(states)[0]), len(episode_seeds))
    obs = np.zeros((*shape, horizon + 1, task.obs_dim), np.float32)
    actions = np.zeros((*shape, horizon, task.act_dim), np.float32)
    rewards = np.zeros((*shape, horizon), np.float32)
    ended = np.zeros((*shape, horizon), bool)
    events = {name: np.zeros((*shape, horizon), bool) for name in task.events}
    env = task.make_env()
    for i in range(shape[0]):
        state = jax.tree.map(lambda x: x[i], states)
        for j, seed in enumerate(episode_seeds):
            first, _ = env.reset(seed=int(seed))
            obs[i, j, :] = first
            history = np.repeat(first[None], config.obs_steps, axis=0).astype(np.float32)
            chunk_key = jax.random.fold_in(reset_key(int(seed)), 2)
            for t in range(horizon):
                if t % config.exec_steps == 0:
                    chunk = np.asarray(sample(state, history, jax.random.fold_in(chunk_key, t)))
                action = chunk[t % config.exec_steps]
                observation, reward, terminated, truncated, info = env.step(action)
                history = np.concatenate([history[1:], np.asarray(observation, np.float32)[None]])
                obs[i, j, t + 1:], actions[i, j, t], rewards[i, j, t] = observation, action, reward
                for name in task.events:
                    events[name][i, j, t] = info["events"][name]
                if terminated or truncated:
                    ended[i, j, t] = True
                    break
    env.close()
    return obs, actions, rewards, ended, events


def evaluate(task: Task, policy: Policy, states: PolicyState, episode_seeds: np.ndarray, steps: int | None = None,
             expert_return: float | None = None) -> Rollouts:
    """Roll out every seed's policy (states stacked on axis 0) on the same episodes (paired comparison)."""
    if task.functional is None:
        obs, actions, rewards, ended, events = _gym_episodes(task, policy, states, episode_seeds, steps)
    else:
        run = jax.jit(jax.vmap(jax.vmap(lambda st, s: _episode(task, policy, st, s, steps), in_axes=(None, 0)),
                               in_axes=(0, None)))
        obs, actions, rewards, ended, events = jax.device_get(run(states, jnp.asarray(episode_seeds)))
    lengths = np.where(ended.any(-1), ended.argmax(-1) + 1, task.horizon)
    returns = rewards.sum(-1)
    success = np.array([[task.success({k: v[i, j] for k, v in events.items()}, returns[i, j], lengths[i, j],
                                      expert_return) for j in range(lengths.shape[1])] for i in range(lengths.shape[0])])
    return Rollouts(obs, actions, rewards, events, lengths, returns, success)
