import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import weakref

import gymnasium as gym
import h5py
import jax
import jax.numpy as jnp
import minari
import numpy as np
import pytest
from minari.data_collector import EpisodeBuffer

from physgen import PhysgenError, interrupts
from physgen.bench.experiments import read_experiment
from physgen.cli import main
from physgen.data import (Normalizer, Trajectories, ensure_dataset, generate_dataset, load_dataset, normalized_score,
                          reference_scores, sample_sequences, sample_windows, sequence_starts, split_episodes,
                          windows_at)
from physgen.data import generate as generate_module
from physgen.data import trajectories
from physgen.data.trajectories import CACHE_NAME, write_array_cache
from physgen.envs import get_task
from physgen.envs.rollout import expert_policy, rollout_jax
from physgen.world_models.data import generate_noisy_dataset


def test_minari_round_trip_holds_the_exact_rollout(fork_dataset):
    task = get_task("fork")
    expected = rollout_jax(task, expert_policy(task), seed=0, episodes=20)
    dataset = minari.load_dataset("physgen/fork/expert-v0")  # plain Minari, no physgen code
    assert dataset.total_episodes == 20 and dataset.total_steps == sum(e.length for e in expected)
    for episode, want in zip(dataset.iterate_episodes(), expected):
        np.testing.assert_array_equal(episode.observations, want.observations)
        np.testing.assert_array_equal(episode.actions, want.actions)
        np.testing.assert_array_equal(episode.rewards, want.rewards.astype(np.float64))
        np.testing.assert_array_equal(episode.terminations, want.terminations)
        np.testing.assert_array_equal(episode.truncations, want.truncations)
        for name in task.events:
            np.testing.assert_array_equal(episode.infos[name], np.concatenate([[False], want.events[name]]))
    meta = dataset.storage.metadata
    assert meta["physgen_task"] == "fork" and meta["physgen_seed"] == 0 and meta["physgen_policy"] == "expert"
    assert "scripted expert" in meta["algorithm_name"]
    assert meta["ref_min_score"] < 0.5 < meta["ref_max_score"]
    env = dataset.recover_environment()
    obs, _ = env.reset(seed=expected[3].seed)
    np.testing.assert_array_equal(obs, expected[3].observations[0])


def test_generation_is_seeded(minari_root):
    task = get_task("fork")
    paths = [generate_dataset(task, episodes=5, seed=s, name=f"seeded{i}-v0") for i, s in enumerate((3, 3, 4))]
    loaded = [load_dataset(task, p.name).trajectories for p in paths]
    np.testing.assert_array_equal(loaded[0].observations, loaded[1].observations)
    np.testing.assert_array_equal(loaded[0].actions, loaded[1].actions)
    assert loaded[0].observations.shape != loaded[2].observations.shape or not np.array_equal(
        loaded[0].observations, loaded[2].observations)


def test_random_policy_dataset_for_a_gymnasium_task(minari_root):
    task = dataclasses.replace(get_task("hopper"), demonstrators={})  # a Gymnasium task without an expert
    path = generate_dataset(task, episodes=2, seed=0, policy="random")
    dataset = load_dataset(task, path.name)
    assert dataset.trajectories.num_episodes == 2
    assert dataset.trajectories.observations.shape[1] == 11
    assert "ref_min_score" in dataset.metadata and "ref_max_score" not in dataset.metadata
    with pytest.raises(PhysgenError, match="no expert reference score"):
        normalized_score(dataset.metadata, [1.0])
    with pytest.raises(PhysgenError, match="has no policy 'expert'.*its policies: random"):
        generate_dataset(task, episodes=1)
    metadata_file = path / "data" / "metadata.json"  # as an earlier physgen wrote it: no format
    metadata = json.loads(metadata_file.read_text())
    metadata_file.write_text(json.dumps({k: v for k, v in metadata.items() if k != "physgen_format"}))
    with pytest.raises(PhysgenError, match="stored each episode's last observation as its first; delete .*random-v0 "
                                           "and regenerate it with `physgen data --task hopper --policy random`"):
        load_dataset(task, path.name)


def test_loaded_arrays_line_up_with_episodes(fork_dataset):
    data = load_dataset(get_task("fork")).trajectories
    episodes = list(minari.load_dataset("physgen/fork/expert-v0").iterate_episodes())
    lengths = [len(e.rewards) for e in episodes]
    np.testing.assert_array_equal(data.episode_lengths, lengths)
    np.testing.assert_array_equal(data.episode_starts, np.concatenate([[0], np.cumsum(lengths)[:-1]]))
    second = slice(lengths[0], lengths[0] + lengths[1])
    np.testing.assert_array_equal(data.observations[second], episodes[1].observations[:-1])
    np.testing.assert_array_equal(data.next_observations[second], episodes[1].observations[1:])
    np.testing.assert_array_equal(data.step_episodes[second], 1)
    assert data.terminals[second][-1] and not data.terminals[second][:-1].any()


def test_array_cache_is_trusted_only_while_the_minari_files_are_unchanged(minari_root):
    task = get_task("fork")
    path = generate_dataset(task, episodes=3, seed=0, name="cache-v0")
    assert (path / CACHE_NAME).exists()
    truth = load_dataset(task, "cache-v0").trajectories
    with np.load(path / CACHE_NAME) as cache:
        arrays = {key: cache[key] for key in cache.files if key != "stamp"}
    write_array_cache(path, {**arrays, "actions": arrays["actions"] + 1})
    np.testing.assert_array_equal(load_dataset(task, "cache-v0").trajectories.actions, truth.actions + 1)
    # new contents of the same size and modification time (a file rewritten in place, or copied back with its times)
    data_file = path / "data" / "main_data.hdf5"
    before = data_file.stat()
    with h5py.File(data_file, "r+") as file:
        file["episode_0/actions"][0] = np.asarray(file["episode_0/actions"][0]) + 0.25
    os.utime(data_file, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert data_file.stat().st_size == before.st_size
    changed = np.asarray(truth.actions).copy()
    changed[0] += 0.25
    np.testing.assert_array_equal(load_dataset(task, "cache-v0").trajectories.actions, changed)
    with np.load(path / CACHE_NAME) as cache:
        np.testing.assert_array_equal(cache["actions"], changed)


def test_a_dataset_folder_that_refuses_the_cache_loads_from_memory(minari_root, monkeypatch, capsys):
    task = get_task("fork")
    path = generate_dataset(task, episodes=2, seed=0, name="read-only-v0")
    (path / CACHE_NAME).unlink()

    def read_only(dataset_dir, arrays):  # as root, file modes do not stop writes: the refusal is simulated
        raise PermissionError(13, "Permission denied", str(dataset_dir / CACHE_NAME))

    monkeypatch.setattr(trajectories, "write_array_cache", read_only)
    assert load_dataset(task, "read-only-v0").trajectories.num_episodes == 2
    assert not (path / CACHE_NAME).exists()
    assert "could not cache physgen/fork/read-only-v0 (Permission denied)" in capsys.readouterr().err


def test_split_is_by_whole_episodes_and_seeded(fork_dataset):
    data = load_dataset(get_task("fork")).trajectories
    train, val = split_episodes(data, 0.25, seed=1)
    assert (train.num_episodes, val.num_episodes) == (15, 5)
    assert train.num_steps + val.num_steps == data.num_steps
    rows = {tuple(r) for r in np.asarray(data.observations)}
    train_rows, val_rows = ({tuple(r) for r in np.asarray(x.observations)} for x in (train, val))
    assert train_rows | val_rows == rows and not train_rows & val_rows
    again, _ = split_episodes(data, 0.25, seed=1)
    np.testing.assert_array_equal(again.observations, train.observations)


def _toy_trajectories() -> Trajectories:
    """Two episodes of lengths 3 and 4; observation and action of global step i are (i,) and (10 + i,)."""
    steps = np.arange(7, dtype=np.float32)[:, None]
    return Trajectories.from_steps(steps, steps + 10, np.zeros(7, np.float32), steps + 1,
                                   np.zeros(7, bool), [3, 4])


def test_windows_repeat_the_edge_values_at_both_ends_of_an_episode():
    data = _toy_trajectories()
    batch = windows_at(data, jnp.array([0, 2, 3, 5]), obs_steps=3, action_steps=4)
    np.testing.assert_array_equal(batch.observations[..., 0], [[0, 0, 0], [0, 1, 2], [3, 3, 3], [3, 4, 5]])
    np.testing.assert_array_equal(batch.actions[..., 0], [[10, 11, 12, 12], [12, 12, 12, 12],
                                                           [13, 14, 15, 16], [15, 16, 16, 16]])


def test_window_sampler_is_seeded_and_normalizes(fork_dataset):
    data = load_dataset(get_task("fork")).trajectories
    obs_norm, act_norm = Normalizer.fit(data.observations), Normalizer.fit(data.actions)
    a = sample_windows(data, jax.random.key(0), 64, 2, 16, obs_norm, act_norm)
    b = sample_windows(data, jax.random.key(0), 64, 2, 16, obs_norm, act_norm)
    c = sample_windows(data, jax.random.key(1), 64, 2, 16, obs_norm, act_norm)
    assert a.observations.shape == (64, 2, 6) and a.actions.shape == (64, 16, 2)
    np.testing.assert_array_equal(a.actions, b.actions)
    assert not np.array_equal(a.actions, c.actions)
    assert np.all(np.abs(a.actions) <= 1 + 1e-6) and np.all(np.abs(a.observations) <= 1 + 1e-6)


def test_sequence_chunks_stay_inside_one_episode():
    data = _toy_trajectories()
    starts = sequence_starts(data, 3)
    np.testing.assert_array_equal(starts, [0, 3, 4])
    batch = sample_sequences(data, jnp.asarray(starts), jax.random.key(0), 32, 3)
    first = np.asarray(batch.observations[:, 0, 0]).astype(int)
    assert set(first) <= {0, 3, 4}
    np.testing.assert_array_equal(batch.observations[..., 0], first[:, None] + np.arange(3))
    np.testing.assert_array_equal(batch.next_observations, batch.observations + 1)
    with pytest.raises(PhysgenError, match="sequence length 5 .* longest episode \\(4 steps\\)"):
        sequence_starts(data, 5)


@pytest.mark.parametrize("mode", ["minmax", "gaussian"])
def test_normalizer_round_trip_and_ranges(mode):
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(500, 3)).astype(np.float32)
    x[:, 2] = 5.0  # a constant dimension
    norm = Normalizer.fit(x, mode)
    y = np.asarray(norm.normalize(x))
    np.testing.assert_allclose(norm.unnormalize(y), x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y[:, 2], 0.0)
    if mode == "minmax":
        np.testing.assert_allclose(y[:, :2].min(0), -1.0, atol=1e-6)
        np.testing.assert_allclose(y[:, :2].max(0), 1.0, atol=1e-6)
    else:
        np.testing.assert_allclose(y[:, :2].mean(0), 0.0, atol=1e-5)
        np.testing.assert_allclose(y[:, :2].std(0), 1.0, atol=1e-5)


def test_normalized_score_uses_the_reference_scores():
    meta = {"ref_min_score": -1.0, "ref_max_score": 3.0}
    np.testing.assert_allclose(normalized_score(meta, [-1.0, 1.0, 3.0]), [0.0, 0.5, 1.0])


def test_missing_dataset_names_the_command_that_creates_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    with pytest.raises(PhysgenError, match="physgen/maze/expert-v0 not found.*`physgen data --task maze`"):
        load_dataset(get_task("maze"))
    with pytest.raises(PhysgenError, match="`physgen data --task fork --policy random`"):
        load_dataset(get_task("fork"), "random-v0")


def _write_raw(name, episodes, obs_dim=6, task="fork", action_high=1.0):
    """A Minari dataset written without physgen's checks, as a corrupt or foreign file would be."""
    buffers = [EpisodeBuffer(id=i, observations=obs, actions=np.zeros((len(obs) - 1, 2), np.float32),
                             rewards=np.zeros(len(obs) - 1), terminations=np.zeros(len(obs) - 1, bool),
                             truncations=np.zeros(len(obs) - 1, bool)) for i, obs in enumerate(episodes)]
    space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
    actions = gym.spaces.Box(-action_high, action_high, (2,), np.float32)
    ident = name if "/" in name else f"physgen/{task}/{name}"
    return minari.create_dataset_from_buffers(ident, buffers, observation_space=space, action_space=actions)


def test_nan_in_a_dataset_names_the_episode_and_field(minari_root):
    good = np.zeros((4, 6), np.float32)
    bad = good.copy()
    bad[2, 1] = np.nan
    _write_raw("nan-v0", [good, bad])
    with pytest.raises(PhysgenError, match="episode 1: observations hold NaN or Inf \\(first at step 2\\)"):
        load_dataset(get_task("fork"), "nan-v0")


def test_wrong_shapes_and_foreign_datasets_are_refused(minari_root):
    _write_raw("narrow-v0", [np.zeros((4, 3), np.float32)], obs_dim=3)
    with pytest.raises(PhysgenError, match="does not fit task 'fork': its observation space is Box.*\\(3,\\).*"
                       "the task's is Box.*\\(6,\\)"):
        load_dataset(get_task("fork"), "narrow-v0")
    _write_raw("wide-v0", [np.zeros((4, 6), np.float32)], action_high=2.0)
    with pytest.raises(PhysgenError, match="its actions lie in \\[\\[-2. -2.\\].*the task's in \\[\\[-1. -1.\\]"):
        load_dataset(get_task("fork"), "wide-v0")
    generate_dataset(get_task("maze"), episodes=2, seed=0, name="other-v0")
    os.rename(minari_root / "physgen/maze/other-v0", minari_root / "physgen/fork/other-v0")
    with pytest.raises(PhysgenError, match="does not fit task 'fork'"):
        load_dataset(get_task("fork"), "other-v0")
    _write_raw("owned-v0", [np.zeros((4, 6), np.float32)]).storage.update_metadata({"physgen_task": "maze"})
    with pytest.raises(PhysgenError, match="generated for task 'maze', not 'fork'"):
        load_dataset(get_task("fork"), "owned-v0")


def _collect(env_id, ident, episodes, seed):
    """A dataset recorded the way a user records one, with Minari's own DataCollector (random actions)."""
    env = minari.DataCollector(gym.make(env_id))
    env.action_space.seed(seed)
    for episode in range(episodes):
        env.reset(seed=seed + episode)
        done = False
        while not done:
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            done = terminated or truncated
    return env.create_dataset(dataset_id=ident, algorithm_name="random")


def test_a_dataset_recorded_with_minaris_data_collector_is_loaded_and_scored(minari_root, monkeypatch, capsys):
    fork = get_task("fork")
    recorded = _collect(fork.gym_id, "me/fork-walks-v0", episodes=3, seed=7)
    dataset = ensure_dataset(fork, "me/fork-walks-v0")
    assert dataset.dataset_id == "me/fork-walks-v0"
    assert dataset.trajectories.num_episodes == 3 and dataset.trajectories.num_steps == recorded.total_steps
    first = next(recorded.iterate_episodes())
    np.testing.assert_array_equal(dataset.trajectories.observations[:len(first.actions)], first.observations[:-1])
    # its metadata has no reference scores: they are physgen's own, from the same seeded episodes
    assert "ref_min_score" not in recorded.storage.metadata
    assert {k: dataset.metadata[k] for k in ("ref_min_score", "ref_max_score")} == reference_scores(fork)
    assert "computing reference scores for me/fork-walks-v0" in capsys.readouterr().out
    # kept beside the dataset, not in its metadata; the next load reads them back
    assert (minari_root / "me/fork-walks-v0" / generate_module.REFERENCE_CACHE).exists()
    assert "ref_min_score" not in minari.load_dataset("me/fork-walks-v0").storage.metadata
    monkeypatch.setattr(generate_module, "reference_scores", lambda *a, **k: pytest.fail("computed again"))
    assert ensure_dataset(fork, "me/fork-walks-v0").metadata == dataset.metadata
    _collect(fork.gym_id, "plain-v0", episodes=2, seed=0)  # no namespace: found when physgen has no plain-v0
    assert load_dataset(fork, "plain-v0").dataset_id == "plain-v0"


def test_the_bench_learns_from_a_recorded_dataset_and_records_it_for_reproduction(minari_root, tmp_path):
    _collect(get_task("fork").gym_id, "me/fork-bench-v0", episodes=4, seed=3)
    out = tmp_path / "run"
    argv = ["bench", "--task", "fork", "--dataset", "me/fork-bench-v0", "--methods", "bc", "--seeds", "2",
            "--episodes", "2", "--budget", "smoke", "--no-videos", "--out", str(out)]
    assert main(argv) == 0
    experiment = json.loads((out / "protocol.json").read_text())["experiment"]
    assert experiment["dataset"]["id"] == "me/fork-bench-v0" and experiment["dataset"]["episodes"] == 4
    assert experiment["dataset"]["ref_min_score"] == reference_scores(get_task("fork"))["ref_min_score"]
    assert "--dataset me/fork-bench-v0" in json.loads((out / "results.json").read_text())["run"]["command"]
    assert read_experiment(out / "experiment.toml")["dataset"] == "me/fork-bench-v0"


def test_a_dataset_of_another_task_or_a_missing_id_is_refused_without_generating(minari_root):
    _collect(get_task("maze").gym_id, "me/maze-walks-v0", episodes=1, seed=0)
    with pytest.raises(PhysgenError, match="me/maze-walks-v0 does not fit task 'fork'.*gymnasium.make"):
        ensure_dataset(get_task("fork"), "me/maze-walks-v0")
    with pytest.raises(PhysgenError, match="me/nothing-v0 not found.*local Minari datasets: .*me/maze-walks-v0"):
        ensure_dataset(get_task("fork"), "me/nothing-v0")
    with pytest.raises(PhysgenError, match="dataset typo-v0 not found"):
        ensure_dataset(get_task("fork"), "typo-v0")
    assert not (minari_root / "physgen/fork/typo-v0").exists()


def test_a_dataset_from_an_earlier_expert_is_refused_and_kept(minari_root):
    task = get_task("fork")
    path = generate_dataset(task, episodes=2, seed=0)
    earlier = dataclasses.replace(task, demonstrations="scripted expert: picks its side at reset")
    generate_dataset(earlier, episodes=2, seed=0, name="old-expert-v0")
    with pytest.raises(PhysgenError, match=r"earlier expert of 'fork' \(physgen expert: scripted expert: picks its "
                                           r"side at reset\).*physgen data --task fork"):
        ensure_dataset(task, "old-expert-v0")
    assert (minari_root / "physgen/fork/old-expert-v0/data").exists()
    assert load_dataset(task, path.name).trajectories.num_episodes == 2  # the current expert's loads
    generate_noisy_dataset(earlier, episodes=2)
    with pytest.raises(PhysgenError, match=r"earlier expert.*physgen data --task fork --policy noisy"):
        ensure_dataset(task, "noisy-v0")
    with pytest.raises(PhysgenError, match=r"earlier expert.*physgen data --task fork --policy noisy`"):
        load_dataset(task, "physgen/fork/noisy-v0")  # named by its Minari id
    generate_noisy_dataset(task, episodes=2, name="noisy2-v0")  # a variant of today's expert loads
    assert load_dataset(task, "noisy2-v0").trajectories.num_episodes == 2


def test_empty_dataset_is_refused(minari_root):
    _write_raw("empty-v0", [])
    with pytest.raises(PhysgenError, match="is empty"):
        load_dataset(get_task("fork"), "empty-v0")


def test_interrupted_generation_keeps_the_old_dataset_and_leaves_no_files(minari_root, monkeypatch):
    task = get_task("fork")
    generate_dataset(task, episodes=3, seed=0, name="keep-v0")
    before = load_dataset(task, "keep-v0").trajectories
    calls = []

    def interrupt_midway(index, episode):
        calls.append(index)
        if index == 5:
            raise KeyboardInterrupt
        return original(index, episode)

    original = generate_module._buffer
    monkeypatch.setattr(generate_module, "_buffer", interrupt_midway)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(task, episodes=10, seed=1, name="keep-v0")
    assert calls[-1] == 5
    np.testing.assert_array_equal(load_dataset(task, "keep-v0").trajectories.observations, before.observations)
    assert not [p for p in minari_root.parent.iterdir() if p.name.startswith(".physgen-staging-")]


def _signal_generation(tmp_path, env: dict, signum: int) -> int:
    """Start a large `physgen data` run, send it `signum` while Minari writes the dataset, and return its exit code."""
    proc = subprocess.Popen([sys.executable, "-m", "physgen.cli", "data", "--task", "fork", "--episodes", "20000"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(".physgen-staging-") for p in tmp_path.iterdir()) and time.monotonic() < deadline:
        assert proc.poll() is None, "generation finished before it could be stopped"
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signum)
    return proc.wait(timeout=120)


def test_killed_generation_leaves_no_dataset(tmp_path):
    """SIGKILL while Minari writes: the dataset id does not exist afterwards (the staging folder is ignored)."""
    env = {**os.environ, "MINARI_DATASETS_PATH": str(tmp_path / "datasets")}
    _signal_generation(tmp_path, env, signal.SIGKILL)
    assert not (tmp_path / "datasets" / "physgen" / "fork" / "expert-v0").exists()
    result = subprocess.run([sys.executable, "-c", "import minari; print(list(minari.list_local_datasets()))"],
                            env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_staging_folders_of_killed_runs_are_removed_by_the_next_run(minari_root):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    killed = minari_root.parent / f".physgen-staging-{gone}-abc"  # its process has ended
    running = minari_root.parent / f".physgen-staging-{os.getppid()}-def"  # its process is alive
    try:
        for folder in (killed, running):
            (folder / "physgen").mkdir(parents=True)
        generate_dataset(get_task("fork"), episodes=2, seed=0, name="after-kill-v0")
        assert not killed.exists() and running.exists()
    finally:
        shutil.rmtree(running, ignore_errors=True)


def test_terminated_generation_cleans_up_as_an_interrupt_does(tmp_path):
    env = {**os.environ, "MINARI_DATASETS_PATH": str(tmp_path / "datasets")}
    code = _signal_generation(tmp_path, env, signal.SIGTERM)
    assert code == 130  # even when the interrupt first lands in one of h5py's weakref callbacks, where Python drops it
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".physgen-staging-")]
    assert not (tmp_path / "datasets" / "physgen" / "fork" / "expert-v0").exists()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped stop, as intended
def test_a_stop_dropped_in_a_weakref_callback_is_raised_at_the_next_check():
    class Held:
        pass

    def stop_here(_):  # the signal's handler runs in this callback, and Python drops what it raises
        os.kill(os.getpid(), signal.SIGTERM)
        sum(range(1000))

    passed = []
    with pytest.raises(KeyboardInterrupt), interrupts.stoppable():
        held = Held()
        watcher = weakref.ref(held, stop_here)
        del held
        passed.append(watcher() is None)  # the callback ran, and the stop it raised did not reach here
        interrupts.check()
    assert passed == [True]
    interrupts.check()  # leaving the block forgets the request
