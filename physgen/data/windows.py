"""Jittable batch samplers: observation-history / action-chunk windows for policies, sequence chunks for world models.

Windows follow Diffusion Policy's padding: the observation history of the step `t` is `o[t-T_o+1 .. t]` and its action
chunk `a[t .. t+T_p-1]`; indices that fall outside the episode repeat its first observation or its last action.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from physgen.data.normalizer import Normalizer
from physgen.data.trajectories import Trajectories
from physgen.errors import PhysgenError


class WindowBatch(NamedTuple):
    observations: jax.Array  # (B, T_o, obs_dim)
    actions: jax.Array  # (B, T_p, act_dim)


class SequenceBatch(NamedTuple):
    """Chunks of L consecutive steps inside one episode: step i is (o_i, a_i, r_i, terminal_i, next o_i)."""

    observations: jax.Array  # (B, L, obs_dim)
    actions: jax.Array  # (B, L, act_dim)
    rewards: jax.Array  # (B, L)
    terminals: jax.Array  # (B, L)
    next_observations: jax.Array  # (B, L, obs_dim)


def windows_at(data: Trajectories, steps: jax.Array, obs_steps: int, action_steps: int,
               obs_norm: Normalizer | None = None, act_norm: Normalizer | None = None) -> WindowBatch:
    """The windows anchored at `steps`, their step indices padded at the episodes' edges."""
    episodes = data.step_episodes[steps]
    first = data.episode_starts[episodes][:, None]
    last = first + data.episode_lengths[episodes][:, None] - 1
    obs = data.observations[jnp.clip(steps[:, None] + jnp.arange(1 - obs_steps, 1), first, last)]
    act = data.actions[jnp.clip(steps[:, None] + jnp.arange(action_steps), first, last)]
    return WindowBatch(obs if obs_norm is None else obs_norm.normalize(obs),
                       act if act_norm is None else act_norm.normalize(act))


@partial(jax.jit, static_argnames=("batch_size", "obs_steps", "action_steps"))
def sample_windows(data: Trajectories, key: jax.Array, batch_size: int, obs_steps: int, action_steps: int,
                   obs_norm: Normalizer | None = None, act_norm: Normalizer | None = None) -> WindowBatch:
    """A batch of windows anchored at uniformly drawn steps."""
    steps = jax.random.randint(key, (batch_size,), 0, data.num_steps)
    return windows_at(data, steps, obs_steps, action_steps, obs_norm, act_norm)


def sequence_starts(data: Trajectories, length: int) -> np.ndarray:
    """Every step from which `length` steps stay inside its episode; a clear error if there is none."""
    lengths = np.asarray(data.episode_lengths)
    if length < 1 or length > lengths.max():
        raise PhysgenError(f"sequence length {length} must be between 1 and the longest episode "
                           f"({lengths.max()} steps); choose a shorter length")
    starts = np.asarray(data.episode_starts)
    return np.concatenate([np.arange(s, s + n - length + 1) for s, n in zip(starts, lengths) if n >= length])


@partial(jax.jit, static_argnames=("batch_size", "length"))
def sample_sequences(data: Trajectories, valid_starts: jax.Array, key: jax.Array, batch_size: int,
                     length: int) -> SequenceBatch:
    """A batch of chunks drawn uniformly from `valid_starts` (see `sequence_starts`)."""
    first = valid_starts[jax.random.randint(key, (batch_size,), 0, valid_starts.shape[0])]
    idx = first[:, None] + jnp.arange(length)
    return SequenceBatch(data.observations[idx], data.actions[idx], data.rewards[idx], data.terminals[idx],
                         data.next_observations[idx])
