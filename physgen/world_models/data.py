"""Training data for world models: episodes as frames for the RSSM, datasets that also show failures, their union.

A planner can only avoid what its model has seen: fork's expert never touches the obstacle, so a model trained on
its dataset alone cannot predict a collision. `generate_noisy_dataset` writes the expert with Gaussian action
noise (a Minari dataset like any other), whose episodes also end in collisions (on fork, noise 1.0: 43% of
episodes collide, 40% reach the goal).
"""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from physgen.data import Trajectories, generate_dataset
from physgen.envs import Task
from physgen.errors import PhysgenError


def generate_noisy_dataset(task: Task, episodes: int, seed: int = 0, noise: float = 1.0,
                           name: str = "noisy-v0") -> Path:
    """Write `physgen/<task>/<name>`: the task's pure-JAX expert with N(0, noise^2) added to each action, clipped."""
    if task.functional is None:
        raise PhysgenError(f"task {task.name!r} has no pure-JAX expert to add noise to; use `physgen data --policy`")
    expert, low, high = task.functional.expert, task.action_space.low, task.action_space.high

    def noisy(state, key):
        k_expert, k_noise = jax.random.split(key)
        return jnp.clip(expert(state, k_expert) + noise * jax.random.normal(k_noise, low.shape), low, high)

    variant = dataclasses.replace(task, functional=task.functional._replace(expert=noisy),
                                  demonstrations=f"{task.demonstrations}; plus Gaussian action noise {noise}")
    return generate_dataset(variant, episodes=episodes, seed=seed, name=name)


def concat_trajectories(parts: list[Trajectories]) -> Trajectories:
    """The episodes of several datasets, one after the other."""
    fields = ("observations", "actions", "rewards", "next_observations", "terminals")
    columns = [np.concatenate([np.asarray(getattr(p, f)) for p in parts]) for f in fields]
    return Trajectories.from_steps(*columns, np.concatenate([np.asarray(p.episode_lengths) for p in parts]))


class Frames(NamedTuple):
    """Episodes laid end to end as T + 1 frames each (DreamerV3's replay layout): frame i is an observation with the
    action, reward and termination that led to it; an episode's first frame has `first` set, zero action and reward."""

    observations: jax.Array  # (N, obs_dim)
    prev_actions: jax.Array  # (N, act_dim)
    rewards: jax.Array  # (N,)
    terminals: jax.Array  # (N,) float
    first: jax.Array  # (N,) bool


def frames_from(data: Trajectories) -> Frames:
    """Every episode of `data` as frames: its first observation, then each step's next observation."""
    starts, lengths = np.asarray(data.episode_starts), np.asarray(data.episode_lengths)
    frame_starts = starts + np.arange(len(starts))  # each episode gains one frame
    total = int(lengths.sum()) + len(starts)
    first = np.zeros(total, bool)
    first[frame_starts] = True
    arrived = np.flatnonzero(~first)  # frame of each step's next observation, in step order

    def lay(first_values, step_values):
        out = np.zeros((total, *np.shape(step_values)[1:]), np.float32)
        out[frame_starts], out[arrived] = first_values, step_values
        return out

    obs = np.asarray(data.observations)
    return Frames(*(jnp.asarray(x) for x in (
        lay(obs[starts], np.asarray(data.next_observations)), lay(0.0, np.asarray(data.actions)),
        lay(0.0, np.asarray(data.rewards)), lay(0.0, np.asarray(data.terminals)), first)))


@partial(jax.jit, static_argnames=("batch_size", "length"))
def sample_frames(frames: Frames, key: jax.Array, batch_size: int, length: int,
                  size: jax.Array | None = None) -> Frames:
    """`batch_size` windows of `length` consecutive frames at uniform starts (they may cross episodes) within the
    first `size` frames (default: all; a replay buffer fills from the front); the first frame of each window is
    marked `first`, since the state before it is unknown."""
    end = frames.first.shape[0] if size is None else size
    start = jax.random.randint(key, (batch_size,), 0, end - length + 1)
    batch = jax.tree.map(lambda x: x[start[:, None] + jnp.arange(length)], frames)
    return batch._replace(first=batch.first.at[:, 0].set(True))
