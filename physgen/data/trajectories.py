"""Minari datasets loaded into flat device arrays, checked against their task, split by episode."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NamedTuple

import gymnasium as gym
import jax.numpy as jnp
import minari
import numpy as np
from minari.storage import get_dataset_path

from physgen.envs import Task, observes_frames
from physgen.errors import DatasetMissing, PhysgenError
from physgen.io import check_folder, file_digest, write_npz

CACHE_NAME = "physgen_arrays.npz"


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


DATASET_FORMAT = 2  # 2: the first observation of Gymnasium episodes recorded correctly (format 1 had the last)


def demonstrator_name(task: Task, policy: str) -> str:
    """What a physgen dataset records as its Minari `algorithm_name`: the policy, and for the expert how it acts, so
    that a dataset recorded from an earlier version of the task's expert is told apart."""
    return f"physgen {policy}: {task.demonstrations if policy == 'expert' else 'uniform random actions'}"


def dataset_id(task: str, name: str = "expert-v0") -> str:
    """The Minari id of a dataset name: physgen's own `physgen/<task>/<name>` for a bare name such as `expert-v0`;
    a name with a namespace (`me/hopper-walks-v0`, one made with Minari's `DataCollector`) is an id already
    (`load_dataset` also finds a local id without a namespace that physgen has no dataset of that name for)."""
    return name if "/" in name else f"physgen/{task}/{name}"


def datasets_root() -> Path:
    """Where Minari keeps datasets: `MINARI_DATASETS_PATH`, else `~/.minari/datasets`."""
    configured = os.environ.get("MINARI_DATASETS_PATH")
    if configured:  # refused in one line before Minari tries to create it
        check_folder(Path(configured), "MINARI_DATASETS_PATH", write=False)
    return get_dataset_path()


def _create_command(task: Task, name: str) -> str:
    """The `physgen data` command that writes physgen's own dataset `name` (or id `physgen/<task>/<name>`) of
    `task`."""
    policy = name.rsplit("/", 1)[-1].rsplit("-v", 1)[0]
    return f"`physgen data --task {task.name}" + ("`" if policy == "expert" else f" --policy {policy}`")


def _missing(task: Task, name: str) -> DatasetMissing:
    policy = name.rsplit("-v", 1)[0]
    if "/" in name or policy not in ("expert", "random", "noisy", *task.demonstrators):
        local = sorted(minari.list_local_datasets())
        listed = ", ".join(local[:12]) + (f" and {len(local) - 12} more" if len(local) > 12 else "") or "none"
        return DatasetMissing(f"dataset {name} not found under {datasets_root()} (local Minari datasets: {listed}); "
                              "check the id and MINARI_DATASETS_PATH")
    return DatasetMissing(f"dataset {dataset_id(task.name, name)} not found under {datasets_root()}; create it with "
                          + _create_command(task, name))


def flatten_episodes(task: Task, episodes: Iterable) -> dict[str, np.ndarray]:
    """Concatenate episodes (anything with observations, actions, rewards, terminations), checking each one's shapes."""
    columns = {key: [] for key in ("observations", "next_observations", "actions", "rewards", "terminals")}
    lengths = []
    for index, episode in enumerate(episodes):
        steps = len(episode.rewards)
        obs, actions = np.asarray(episode.observations), np.asarray(episode.actions)
        for field, value, shape in (("observations", obs, (steps + 1, task.obs_dim)),
                                    ("actions", actions, (steps, task.act_dim))):
            if value.shape != shape:
                raise PhysgenError(f"episode {index}: {field} have shape {value.shape}, task {task.name!r} expects "
                                   f"{shape}; the dataset was made for another task or is corrupt: regenerate it "
                                   f"with `physgen data --task {task.name}`")
        columns["observations"].append(obs[:-1])
        columns["next_observations"].append(obs[1:])
        columns["actions"].append(actions)
        columns["rewards"].append(episode.rewards)
        columns["terminals"].append(episode.terminations)
        lengths.append(steps)
    # frames stay uint8 (a quarter of float32's memory); policies normalize them to float32 in each batch
    frames = {"observations": np.uint8, "next_observations": np.uint8} if observes_frames(task) else {}
    dtypes = {"terminals": bool, **frames}
    flat = {key: np.concatenate(parts).astype(dtypes.get(key, np.float32)) for key, parts in columns.items()}
    return {**flat, "episode_lengths": np.asarray(lengths, np.int32)}


def _stamp(dataset_dir: Path) -> str:
    """Names and content digests of the Minari data files: a cache made for other contents is ignored (sizes and
    modification times can stay the same when a file is rewritten or copied back)."""
    files = sorted(f for f in (dataset_dir / "data").iterdir() if f.name != "metadata.json")
    return " ".join(f"{f.name}:{file_digest(f)}" for f in files)


def write_array_cache(dataset_dir: Path, arrays: dict[str, np.ndarray]) -> None:
    """Save the flattened dataset beside the Minari files (atomically), so that loading skips per-episode reads."""
    frames = arrays["observations"].dtype == np.uint8  # mostly background: compressed tenfold or more
    write_npz(dataset_dir / CACHE_NAME, {"stamp": np.asarray(_stamp(dataset_dir)), **arrays}, compressed=frames)


def _read_array_cache(dataset_dir: Path) -> dict[str, np.ndarray] | None:
    path = dataset_dir / CACHE_NAME
    if not path.exists():
        return None
    with np.load(path) as cache:
        arrays = {key: cache[key] for key in cache.files}
    stamp = arrays.pop("stamp")
    return arrays if stamp.dtype.kind == "U" and str(stamp) == _stamp(dataset_dir) else None


def _check_finite(arrays: dict[str, np.ndarray]) -> None:
    starts = np.concatenate([[0], np.cumsum(arrays["episode_lengths"])])
    for field in ("observations", "next_observations", "actions", "rewards"):
        bad = np.flatnonzero(~np.isfinite(arrays[field].reshape(len(arrays[field]), -1)).all(axis=1))
        if bad.size:
            episode = int(np.searchsorted(starts, bad[0], side="right") - 1)
            step = int(bad[0] - starts[episode]) + (field == "next_observations")
            field = "observations" if field == "next_observations" else field
            raise PhysgenError(f"episode {episode}: {field} hold NaN or Inf (first at step {step}); drop the "
                               f"episode or regenerate the dataset with `physgen data`")


def _check_spaces(task: Task, ident: str, observation_space, action_space) -> None:
    """Refuse a dataset recorded in other spaces than the task's: other shapes, or actions in other bounds."""
    problems = []
    for what, theirs, ours in (("observation", observation_space, task.observation_space),
                               ("action", action_space, task.action_space)):
        if not isinstance(theirs, gym.spaces.Box) or theirs.shape != ours.shape:
            problems.append(f"its {what} space is {theirs}, the task's is {ours}")
    if not problems and not (np.allclose(action_space.low, task.action_space.low)
                             and np.allclose(action_space.high, task.action_space.high)):
        problems.append(f"its actions lie in [{action_space.low}, {action_space.high}], the task's in "
                        f"[{task.action_space.low}, {task.action_space.high}]")
    if problems:
        raise PhysgenError(f"dataset {ident} does not fit task {task.name!r}: {'; '.join(problems)}. Record it in the "
                           f"task's environment (gymnasium.make({task.gym_id!r})), flattening dictionary "
                           "observations, or choose the task it was made for (`physgen tasks`)")


def load_dataset(task: Task, name: str = "expert-v0") -> Dataset:
    """Load the dataset `name` (physgen's `physgen/<task>/<name>`, or any local Minari dataset id) and check its
    spaces, shapes and values against the task.

    The first load of a dataset reads it episode by episode through Minari and caches the flat arrays beside it
    (`physgen data` writes that cache at once); later loads read the cache while the Minari files are unchanged.
    """
    ident = dataset_id(task.name, name)
    if not (datasets_root() / ident).exists() and (datasets_root() / name).exists():
        ident = name  # a Minari dataset id without a namespace, e.g. one made by DataCollector as `walks-v0`
    dataset_dir = datasets_root() / ident
    try:
        dataset = minari.load_dataset(ident)
    except FileNotFoundError:
        raise _missing(task, name) from None
    metadata = dict(dataset.storage.metadata)
    _check_spaces(task, ident, dataset.observation_space, dataset.action_space)
    owner = metadata.get("physgen_task", task.name)
    if owner != task.name:
        raise PhysgenError(f"dataset {ident} was generated for task {owner!r}, not {task.name!r}")
    recorded_wrong = metadata.get("physgen_format", 1) < DATASET_FORMAT and task.functional is None
    if metadata.get("physgen_version") and recorded_wrong:
        raise PhysgenError(f"dataset {ident} was generated by physgen {metadata['physgen_version']}, whose Gymnasium "
                           "recorder stored each episode's last observation as its first; delete "
                           f"{dataset_dir} and regenerate it with {_create_command(task, name)}")
    recorded = metadata.get("algorithm_name", "")
    # variants of the expert (the noisy expert) record its name with what they add
    if metadata.get("physgen_policy") == "expert" and not recorded.startswith(demonstrator_name(task, "expert")):
        raise PhysgenError(f"dataset {ident} was recorded from an earlier expert of {task.name!r} ({recorded}); the "
                           f"task's expert now acts differently ({task.demonstrations}): delete {dataset_dir} and "
                           f"regenerate it with {_create_command(task, name)}")
    if dataset.total_episodes == 0:
        raise PhysgenError(f"dataset {ident} is empty; regenerate it with `physgen data --task {task.name}`")
    arrays = _read_array_cache(dataset_dir)
    if arrays is None:
        arrays = flatten_episodes(task, dataset.iterate_episodes())
        try:
            write_array_cache(dataset_dir, arrays)
        except OSError as error:  # a read-only or full dataset folder: the arrays serve from memory
            print(f"physgen: could not cache {ident} ({error.strerror}); it loads from the Minari files each time",
                  file=sys.stderr)
    _check_finite(arrays)
    return Dataset(ident, task.name, metadata, Trajectories.from_steps(**arrays))


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
