"""Training data for world models beyond the expert's: datasets that also show failures, and their union.

A planner can only avoid what its model has seen: fork's expert never touches the obstacle, so a model trained on
its dataset alone cannot predict a collision. `generate_noisy_dataset` writes the expert with Gaussian action
noise (a Minari dataset like any other), whose episodes also end in collisions.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from physgen.data import Trajectories, generate_dataset
from physgen.envs import Task
from physgen.errors import PhysgenError


def generate_noisy_dataset(task: Task, episodes: int, seed: int = 0, noise: float = 0.5,
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
