"""`ppo-wm`: PPO trained inside a learned RSSM ("learning in the model"), from dataset states.

The RSSM becomes a pure-JAX environment (`dream_env`), so physgen's PPO trains in it exactly as it trains in fork:
an imagined episode starts by filtering `context` recorded frames ending at a random non-terminal frame of the
dataset; each step samples the prior, the reward head gives the reward, a predicted continue probability below 0.5
terminates, and after `horizon` steps the episode is truncated (PPO bootstraps the value there). The policy sees
decoded observations, so it acts unchanged on the real task. Seeds pair up: PPO seed i trains in RSSM seed i,
all seeds in one compiled program.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from physgen.envs import FunctionalEnv, Task, TimeStep
from physgen.errors import PhysgenError
from physgen.policies.ppo import PPOConfig, train_in
from physgen.world_models.data import Frames
from physgen.world_models.rssm import RSSM, State


@dataclass(frozen=True)
class DreamConfig:
    """How imagined episodes start and end; the PPO settings are a `PPOConfig` beside it."""

    horizon: int = 64  # imagined steps before truncation
    context: int = 8  # recorded frames filtered into the start state

    def __post_init__(self):
        for name in ("horizon", "context"):
            if getattr(self, name) < 1:
                raise PhysgenError(f"{name} must be at least 1, got {getattr(self, name)}")


class DreamState(NamedTuple):
    latent: State
    t: jax.Array
    key: jax.Array


def start_frames(frames: Frames, context: int) -> np.ndarray:
    """Indices of the frames an imagined episode may start from: not terminal, with `context` frames of the same
    episode up to and including them."""
    first, terminal = np.asarray(frames.first), np.asarray(frames.terminals) > 0
    if context > len(first):
        raise PhysgenError(f"context {context} exceeds the {len(first)} frames of the dataset; lower the context")
    episode = np.cumsum(first)
    index = np.arange(len(first))
    valid = (index >= context - 1) & ~terminal
    valid[context - 1:] &= episode[context - 1:] == episode[: len(first) - context + 1]
    if not valid.any():
        raise PhysgenError(f"no dataset episode has {context} frames before a non-terminal one; lower the context")
    return np.flatnonzero(valid)


def dream_env(model: RSSM, params: Any, frames: Frames, starts: jax.Array, config: DreamConfig) -> FunctionalEnv:
    """The RSSM with parameters `params` as a pure-JAX environment (reset/step; no expert, no rendering)."""
    net = model.net(params)

    def reset(key):
        k_pick, k_obs, k_next = jax.random.split(key, 3)
        end = starts[jax.random.randint(k_pick, (), 0, starts.shape[0])]
        window = jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, end - config.context + 1, config.context),
                              frames)
        first = window.first.at[0].set(True)  # what came before the window is not filtered
        states = model.observe(params, window.observations, window.prev_actions, k_obs, first)[0]
        latent = jax.tree.map(lambda x: x[-1], states)
        return DreamState(latent, jnp.int32(0), k_next), model.decode(params, latent)

    def step(state: DreamState, action):
        k_step, k_next = jax.random.split(state.key)
        latent, _ = net.img_step(state.latent, action, k_step)
        terminated = model.continuation(params, latent) < 0.5
        t = state.t + 1
        return TimeStep(DreamState(latent, t, k_next), model.decode(params, latent), model.reward(params, latent),
                        terminated, (t >= config.horizon) & ~terminated, {})

    def unavailable(*args):
        raise PhysgenError("a learned model has no expert or renderer; use the task's own environment")

    return FunctionalEnv(reset=reset, step=step, expert=unavailable, render=unavailable)


@partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _train(task: Task, model: RSSM, ppo: PPOConfig, dream: DreamConfig, params, frames: Frames, starts, keys):
    def one(params, key):
        return train_in(dream_env(model, params, frames, starts, dream), task, ppo, key)

    return jax.vmap(one)(params, keys)


def train_ppo_in_models(task: Task, model: RSSM, params: Any, frames: Frames, seeds: list[int], ppo: PPOConfig,
                        dream: DreamConfig):
    """PPO seed i trained in the RSSM with parameters `params[i]` (stacked over seeds), all seeds in one compiled
    program: (learners stacked over seeds, per-update mean imagined return (seeds, updates))."""
    ppo = ppo.validate()
    starts = jnp.asarray(start_frames(frames, dream.context))
    keys = jnp.stack([jax.random.fold_in(jax.random.key(s), 1) for s in seeds])  # apart from the RSSM's keys
    learners, curve, _ = _train(task, model, ppo, dream, params, frames, starts, keys)
    return learners, np.asarray(curve)
