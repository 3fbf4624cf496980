"""Minari datasets loaded into flat device arrays, checked against their task, split by episode."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax.numpy as jnp
import minari
import numpy as np

from physgen.data.generate import dataset_id, datasets_root
from physgen.envs import Task
from physgen.errors import PhysgenError


class Trajectories(NamedTuple):
    """All steps of a set of episodes, concatenated (a pytree of arrays: pass it into jitted functions).

    Step `i` is (observations[i], actions[i], rewards[i], next_observations[i], terminals[i]) of episode
    `step_episodes[i]`; episode `e` owns steps `episode_starts[e] : episode_starts[e] + episode_lengths[e]`.
    `terminals` marks true terminations, not time limits.
    """

    observations: jnp.ndarray
    actions: jnp.ndarray
    rewards: jnp.ndarray
    next_observations: jnp.ndarray
    terminals: jnp.ndarray
    step_episodes: jnp.ndarray
    episode_starts: jnp.ndarray
    episode_lengths: jnp.ndarray

    @classmethod
    def from_steps(cls, observations, actions, rewards, next_observations, terminals, episode_lengths):
        """Build from per-step arrays of whole episodes laid end to end, with the length of each episode."""
        lengths = np.asarray(episode_lengths, np.int32)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int32)
        episodes = np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)
        return cls(*(jnp.asarray(x) for x in (observations, actions, rewards, next_observations, terminals,
                                              episodes, starts, lengths)))

    @property
    def num_steps(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def num_episodes(self) -> int:
        return int(self.episode_lengths.shape[0])


@dataclass(frozen=True)
class Dataset:
    dataset_id: str
    task: str
    metadata: dict
    trajectories: Trajectories


def _missing(task: Task, name: str) -> PhysgenError:
    policy = name.rsplit("-v", 1)[0]
    return PhysgenError(f"dataset {dataset_id(task.name, name)} not found under {datasets_root()}; create it with "
                        f"`physgen data --task {task.name}" + ("`" if policy == "expert" else f" --policy {policy}`"))


def _check_episode(task: Task, index: int, episode) -> None:
    expected = {"observations": (len(episode.rewards) + 1, task.obs_dim),
                "actions": (len(episode.rewards), task.act_dim)}
    for field, shape in expected.items():
        value = np.asarray(getattr(episode, field))
        if value.shape != shape:
            raise PhysgenError(f"episode {index}: {field} have shape {value.shape}, task {task.name!r} expects "
                               f"{shape}; the dataset was made for another task or is corrupt: regenerate it with "
                               f"`physgen data --task {task.name}`")
    for field in ("observations", "actions", "rewards"):
        value = np.asarray(getattr(episode, field))
        if not np.all(np.isfinite(value)):
            step = int(np.argwhere(~np.isfinite(value))[0][0])
            raise PhysgenError(f"episode {index}: {field} hold NaN or Inf (first at step {step}); drop the episode "
                               f"or regenerate the dataset with `physgen data --task {task.name}`")


def load_dataset(task: Task, name: str = "expert-v0") -> Dataset:
    """Load `physgen/<task>/<name>` and check every episode's shapes and values against the task."""
    ident = dataset_id(task.name, name)
    try:
        dataset = minari.load_dataset(ident)
    except FileNotFoundError:
        raise _missing(task, name) from None
    metadata = dict(dataset.storage.metadata)
    owner = metadata.get("physgen_task", task.name)
    if owner != task.name:
        raise PhysgenError(f"dataset {ident} was generated for task {owner!r}, not {task.name!r}")
    if dataset.total_episodes == 0:
        raise PhysgenError(f"dataset {ident} is empty; regenerate it with `physgen data --task {task.name}`")
    observations, next_observations, actions, rewards, terminals, lengths = [], [], [], [], [], []
    for index, episode in enumerate(dataset.iterate_episodes()):
        _check_episode(task, index, episode)
        obs = np.asarray(episode.observations, np.float32)
        observations.append(obs[:-1])
        next_observations.append(obs[1:])
        actions.append(np.asarray(episode.actions, np.float32))
        rewards.append(np.asarray(episode.rewards, np.float32))
        terminals.append(np.asarray(episode.terminations, bool))
        lengths.append(len(episode.rewards))
    trajectories = Trajectories.from_steps(*(np.concatenate(x) for x in
                                             (observations, actions, rewards, next_observations, terminals)), lengths)
    return Dataset(ident, task.name, metadata, trajectories)


def select_episodes(data: Trajectories, episodes: np.ndarray) -> Trajectories:
    """The given episodes (in the given order), re-concatenated."""
    starts, lengths = np.asarray(data.episode_starts)[episodes], np.asarray(data.episode_lengths)[episodes]
    steps = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lengths)])
    per_step = (data.observations, data.actions, data.rewards, data.next_observations, data.terminals)
    return Trajectories.from_steps(*(x[steps] for x in per_step), lengths)


def split_episodes(data: Trajectories, validation_fraction: float = 0.1, seed: int = 0
                   ) -> tuple[Trajectories, Trajectories]:
    """A seeded train/validation split by whole episodes (at least one episode on each side)."""
    n = data.num_episodes
    if n < 2:
        raise PhysgenError(f"a train/validation split needs at least 2 episodes, the dataset has {n}; "
                           "generate more with `physgen data --episodes N`")
    n_val = min(max(1, round(validation_fraction * n)), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    return select_episodes(data, np.sort(order[n_val:])), select_episodes(data, np.sort(order[:n_val]))


def normalized_score(metadata: dict, returns) -> np.ndarray:
    """(return - random) / (expert - random), with the dataset's reference scores (D4RL's normalised score)."""
    if "ref_max_score" not in metadata:
        raise PhysgenError(f"dataset {metadata.get('dataset_id')} has no expert reference score; it was generated "
                           "without an expert policy")
    low, high = metadata["ref_min_score"], metadata["ref_max_score"]
    return (np.asarray(returns, np.float64) - low) / (high - low)
