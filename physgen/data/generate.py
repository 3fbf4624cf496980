"""`physgen data`: roll out a task's demonstrator and write a Minari dataset, atomically.

The dataset is built in a staging folder beside the Minari root and renamed into place only when complete, so an
interrupted run leaves nothing half-written and an existing dataset is replaced whole or not at all. A staging
folder is named after its process: one left by a killed run (its process gone) is removed by the next run.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from unittest import mock

import h5py
import minari
import numpy as np
from minari.data_collector import EpisodeBuffer
from minari.namespace import create_namespace, list_local_namespaces

import physgen
from physgen import interrupts
from physgen.data.trajectories import (DATASET_FORMAT, Dataset, dataset_id, datasets_root, demonstrator_name,
                                       flatten_episodes, load_dataset, write_array_cache)
from physgen.envs import Task, observes_frames
from physgen.envs.rollout import (Episode, episode_returns, expert_policy, random_policy, rollout_gym,
                                 rollout_jax)
from physgen.errors import DatasetMissing, PhysgenError
from physgen.io import check_folder, pid_alive, read_json, write_json
from physgen.seeds import REFERENCE_OFFSET

REFERENCE_EPISODES = 100
STAGING_PREFIX = ".physgen-staging-"
REFERENCE_CACHE = "physgen_reference.json"


def has_policy(task: Task, policy: str) -> bool:
    return policy == "random" or policy in task.demonstrators or (policy == "expert" and task.functional is not None)


def demonstrator(task: Task, policy: str, load_demonstrator=None):
    """The observation -> action callable of one of the task's demonstrators; one given as a checkpoint path is
    loaded with `load_demonstrator` (physgen's commands pass `physgen.policies.ppo.load_ppo_policy`)."""
    source = task.demonstrators[policy]
    if callable(source):
        return source()
    if load_demonstrator is None:
        raise PhysgenError(f"task {task.name!r}'s {policy!r} demonstrator is a policy checkpoint ({source}); pass "
                           "load_demonstrator=physgen.policies.ppo.load_ppo_policy, as physgen data and bench do")
    return load_demonstrator(source)


def rollout(task: Task, policy: str, seed: int, episodes: int, load_demonstrator=None) -> list[Episode]:
    """Episodes of a named policy on `task`: "random", or one of the task's demonstrators ("expert", ...)."""
    if not has_policy(task, policy):
        known = ", ".join(["random", *(["expert"] if task.functional else []), *task.demonstrators])
        hint = f" ({task.demonstrations})" if policy == "expert" else ""
        raise PhysgenError(f"task {task.name!r} has no policy {policy!r}{hint}; its policies: {known}")
    if (jax_policy := _jax_policy(task, policy)) is not None:
        return rollout_jax(task, jax_policy, seed, episodes)
    return rollout_gym(task, None if policy == "random" else demonstrator(task, policy, load_demonstrator), seed,
                       episodes, name=policy)


def _jax_policy(task: Task, policy: str):
    """A pure-JAX task's expert or random actions as a JAX policy; None for what runs through Gymnasium."""
    if task.functional is None or policy not in ("expert", "random"):
        return None
    return (expert_policy if policy == "expert" else random_policy)(task)


def policy_return(task: Task, policy: str, seed: int, episodes: int, load_demonstrator=None) -> float:
    """The mean return of `rollout`'s episodes; a pure-JAX task's computed alone (an image task's frames undrawn)."""
    if (jax_policy := _jax_policy(task, policy)) is not None:
        return float(np.mean(episode_returns(task, jax_policy, seed, episodes)))
    return mean_return(rollout(task, policy, seed, episodes, load_demonstrator))


def _buffer(index: int, episode: Episode) -> EpisodeBuffer:
    # Minari stores one info row per observation (the reset included): the reset row has no events.
    infos = {name: np.concatenate([[False], flags]) for name, flags in episode.events.items()}
    return EpisodeBuffer(id=index, seed=episode.seed, observations=episode.observations,
                         actions=episode.actions, rewards=episode.rewards.astype(np.float64),
                         terminations=episode.terminations.astype(bool), truncations=episode.truncations.astype(bool),
                         infos=infos)


def mean_return(episodes: list[Episode]) -> float:
    return float(np.mean([e.episode_return for e in episodes]))


def generate_dataset(task: Task, episodes: int | None = None, seed: int = 0, policy: str = "expert",
                     name: str | None = None, load_demonstrator=None) -> Path:
    """Write `physgen/<task>/<policy>-v0` (or `name`) and return its folder.

    Metadata holds the demonstrator, the seed, and reference scores for normalised returns: `ref_min_score` is the
    mean return of uniform random actions over 100 episodes, `ref_max_score` the expert's mean return over the
    dataset itself when it holds at least 100 expert episodes, else over 100 separate episodes. Reference episodes
    use seeds disjoint from the dataset's. `load_demonstrator` loads demonstrators given as checkpoints.
    """
    episodes = task.dataset_episodes if episodes is None else episodes
    if episodes < 1:
        raise PhysgenError(f"--episodes must be at least 1, got {episodes}")
    if seed < 0:
        raise PhysgenError(f"--seed must be at least 0, got {seed}")
    root = datasets_root()
    for folder in (root, root.parent):  # the dataset's folder, and its staging folder's
        check_folder(folder, "the datasets folder (MINARI_DATASETS_PATH)")
    dataset = dataset_id(task.name, name or f"{policy}-v0")
    data = rollout(task, policy, seed, episodes, load_demonstrator)
    scores = reference_scores(task, seed, load_demonstrator,
                              data if policy == "expert" and episodes >= REFERENCE_EPISODES else None)
    return _write_atomically(task, dataset, data, seed, policy, scores["ref_min_score"], scores.get("ref_max_score"))


def reference_scores(task: Task, seed: int = 0, load_demonstrator=None, expert_episodes=None) -> dict[str, float]:
    """`ref_min_score`, the mean return of uniform random actions over 100 episodes, and for tasks with an expert
    `ref_max_score`, the expert's over `expert_episodes` when given, else over 100 episodes. The episodes' seeds
    start at `seed + REFERENCE_OFFSET`, disjoint from the datasets' and the evaluation's."""
    reference_seed = seed + REFERENCE_OFFSET
    scores = {"ref_min_score": policy_return(task, "random", reference_seed, REFERENCE_EPISODES)}
    if expert_episodes is not None:
        scores["ref_max_score"] = mean_return(expert_episodes)
    elif has_policy(task, "expert"):
        scores["ref_max_score"] = policy_return(task, "expert", reference_seed, REFERENCE_EPISODES, load_demonstrator)
    return scores


def with_reference_scores(task: Task, dataset: Dataset, load_demonstrator=None) -> Dataset:
    """`dataset` with the reference scores of normalised returns (and of success rules relative to the expert). A
    dataset made elsewhere, such as with Minari's `DataCollector`, may lack them: they are computed as `physgen
    data` computes its own and kept beside the dataset (never in its metadata: the dataset is the user's)."""
    lacking = "ref_min_score" not in dataset.metadata or (
        "ref_max_score" not in dataset.metadata and has_policy(task, "expert"))
    if not lacking:
        return dataset
    path = datasets_root() / dataset.dataset_id / REFERENCE_CACHE
    scores = read_json(path) if path.exists() else None
    if scores is None:
        print(f"physgen: computing reference scores for {dataset.dataset_id} (its metadata has none): random "
              f"actions{' and the expert' if has_policy(task, 'expert') else ''} over {REFERENCE_EPISODES} episodes")
        scores = reference_scores(task, load_demonstrator=load_demonstrator)
        try:
            write_json(path, scores)
        except OSError as error:  # a read-only dataset folder: computed again next time
            print(f"physgen: could not keep them in {path} ({error.strerror})", file=sys.stderr)
    return dataclasses.replace(dataset, metadata={**dataset.metadata, **scores})


def ensure_dataset(task: Task, name: str = "expert-v0", generate=None, load_demonstrator=None) -> Dataset:
    """The dataset `name` (`load_dataset`), with reference scores (`with_reference_scores`). One of physgen's own
    datasets of the task is generated first when missing (`generate()`, by default from the policy it is named
    after), so that a fresh machine needs nothing else. One that exists but fails its checks is refused, never
    overwritten: it may be the user's only copy."""
    name = name.removeprefix(f"physgen/{task.name}/")  # physgen's own, named by its id (as experiment files do)
    policy = name.removesuffix("-v0")
    try:
        dataset = load_dataset(task, name)
    except DatasetMissing:
        if generate is None and ("/" in name or not has_policy(task, policy)):
            raise
        print(f"physgen: generating {dataset_id(task.name, name)} (first run only)")
        (generate or (lambda: generate_dataset(task, policy=policy, load_demonstrator=load_demonstrator)))()
        dataset = load_dataset(task, name)
    return with_reference_scores(task, dataset, load_demonstrator)


def _write_atomically(task: Task, dataset: str, data: list[Episode], seed: int, policy: str,
                      ref_min: float, ref_max: float | None) -> Path:
    root = datasets_root()
    final = root / dataset
    remove_stale_staging(root.parent)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=root.parent))
    try:
        # Minari writes under the staging folder for the duration of the block
        with mock.patch.dict(os.environ, MINARI_DATASETS_PATH=str(staging)), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Minari warns about unset optional metadata such as author e-mail
            created = minari.create_dataset_from_buffers(
                dataset_id=dataset,
                buffer=_buffers(data),
                env=task.gym_id,
                algorithm_name=demonstrator_name(task, policy),
                author="physgen",
                code_permalink=f"physgen {physgen.__version__}: physgen.data.generate",
                ref_min_score=ref_min,
                ref_max_score=ref_max,  # Minari records both reference scores only when this is set
                num_episodes_average_score=REFERENCE_EPISODES,
                description=f"{task.summary} Generated by `physgen data --task {task.name} --policy {policy} "
                f"--episodes {len(data)} --seed {seed}`.",
            )
            created.storage.update_metadata({
                "physgen_task": task.name, "physgen_policy": policy, "physgen_seed": seed,
                "physgen_version": physgen.__version__, "physgen_format": DATASET_FORMAT,
                "physgen_events": list(task.events),
                **({} if ref_max is not None else {"ref_min_score": ref_min}),
            })
        if observes_frames(task):
            compress_frames(staging / dataset / "data" / "main_data.hdf5")
        write_array_cache(staging / dataset, flatten_episodes(task, data))
        namespace = str(Path(dataset).parent)
        if namespace not in list_local_namespaces():
            create_namespace(namespace)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            final.rename(staging / "replaced")
        (staging / dataset).rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def compress_frames(path: Path) -> None:
    """Rewrite Minari's HDF5 file with its uint8 arrays (camera frames) gzip-compressed, as Minari writes every
    array uncompressed and frames that are mostly background shrink many times over; h5py (and so Minari) reads
    them as before."""
    packed = path.with_name(path.name + ".packed")

    def copy(source: h5py.Group, target: h5py.Group) -> None:
        target.attrs.update(source.attrs)
        for name, item in source.items():
            if isinstance(item, h5py.Group):
                copy(item, target.create_group(name))
            elif item.dtype == np.uint8:
                packed_item = target.create_dataset(name, data=item[()], compression="gzip", chunks=item.shape)
                packed_item.attrs.update(item.attrs)
            else:
                source.copy(item, target, name)

    with h5py.File(path, "r") as source, h5py.File(packed, "w") as target:
        copy(source, target)
    packed.replace(path)


def _buffers(data: list[Episode]):
    """Minari's episode buffers, one at a time (Minari writes each as it comes)."""
    for i, episode in enumerate(data):
        interrupts.check()  # a stop dropped inside h5py's weakref callbacks is honoured at the next episode
        yield _buffer(i, episode)


def remove_stale_staging(folder: Path) -> None:
    """Delete the staging folders in `folder` whose process is gone (a SIGKILL leaves them behind). Folders named
    before pids were recorded have no owner to wait for."""
    for path in folder.glob(f"{STAGING_PREFIX}*"):
        owner = re.match(rf"{re.escape(STAGING_PREFIX)}(\d+)-", path.name)
        if not (owner and pid_alive(int(owner.group(1)))):
            shutil.rmtree(path, ignore_errors=True)
