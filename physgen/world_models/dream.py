"""An RSSM as a pure-JAX environment, for PPO to train in ("learning in the model").

Imagined episodes start from posterior states of recorded data (DreamerV3: imagination starts from every state of
a training batch): `dream_starts` filters random windows of frames once and keeps their non-terminal states, and
an episode's reset only picks one, so an imagined step costs one RSSM step. Each step samples the prior, the reward
head gives the reward, the episode ends with the probability the continue head gives it, and after `horizon` steps
it is truncated (PPO bootstraps the value there). The end is drawn rather than thresholded at 0.5: a head that cannot
tell the last state before a fall from the fall itself (hopper's rates most of its falls above 0.5 to go on,
docs/recipes.md) would otherwise never end an imagined episode, and falling would cost the dreamed policy nothing.
The policy sees decoded observations, so it acts unchanged on the real task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from physgen.configs import check
from physgen.envs import FunctionalEnv, TimeStep
from physgen.errors import PhysgenError
from physgen.world_models.data import Frames, sample_frames
from physgen.world_models.rssm import RSSM, State


@dataclass(frozen=True)
class DreamConfig:
    """How imagined episodes start and end; the PPO settings are a `PPOConfig` beside it."""

    horizon: int = 16  # imagined steps before truncation (DreamerV3 imagines 15; docs/recipes.md measures 16 and 64)
    windows: int = 16  # recorded windows (of the RSSM's sequence length) whose states episodes start from

    def __post_init__(self):
        check(self, positive=("horizon", "windows"))


class Starts(NamedTuple):
    """States imagined episodes start from, and their decoded observations (the policy's first input)."""

    latents: State  # (n, ...)
    obs: jax.Array  # (n, obs_dim)


class DreamState(NamedTuple):
    latent: State
    t: jax.Array
    key: jax.Array


def dream_starts(model: RSSM, params: Any, frames: Frames, config: DreamConfig, key: jax.Array,
                 size: jax.Array | None = None) -> Starts:
    """The posterior states of `config.windows` random windows of `frames` (within the first `size`, as
    `sample_frames`), resampled uniformly among the non-terminal ones (an episode cannot start where one ended)."""
    k_windows, k_observe, k_pick = jax.random.split(key, 3)
    windows = sample_frames(frames, k_windows, config.windows, model.config.sequence_length, size)
    keys = jax.random.split(k_observe, config.windows)
    states = jax.vmap(model.observe, in_axes=(None, 0, 0, 0, 0))(params, windows.observations, windows.prev_actions,
                                                               keys, windows.first)[0]
    states = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), states)
    live = 1.0 - windows.terminals.reshape(-1)
    count = live.shape[0]
    # a batch of terminal frames alone is all but impossible; then every state is kept rather than none
    pick = jax.random.choice(k_pick, count, (count,), p=jnp.where(live.sum() > 0, live, 1.0))
    latents = jax.tree.map(lambda x: x[pick], states)
    return Starts(latents, model.decode(params, latents))


def dream_env(model: RSSM, params: Any, starts: Starts, config: DreamConfig) -> FunctionalEnv:
    """The RSSM with parameters `params` as a pure-JAX environment (reset/step; no expert, no rendering), its
    episodes starting from `starts`."""
    net = model.net(params)

    def reset(key):
        k_pick, k_next = jax.random.split(key)
        i = jax.random.randint(k_pick, (), 0, starts.obs.shape[0])
        return DreamState(jax.tree.map(lambda x: x[i], starts.latents), jnp.int32(0), k_next), starts.obs[i]

    def step(state: DreamState, action):
        k_step, k_end, k_next = jax.random.split(state.key, 3)
        latent, _ = net.img_step(state.latent, action, k_step)
        terminated = jax.random.uniform(k_end) > model.continuation(params, latent)
        t = state.t + 1
        return TimeStep(DreamState(latent, t, k_next), model.decode(params, latent), model.reward(params, latent),
                        terminated, (t >= config.horizon) & ~terminated, {})

    def unavailable(*args):
        raise PhysgenError("a learned model has no expert or renderer; use the task's own environment")

    return FunctionalEnv(reset=reset, step=step, expert=unavailable, render=unavailable)
