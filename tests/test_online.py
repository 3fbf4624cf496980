"""ppo-wm's online loop: real steps laid out as replay frames, and the whole loop seeded."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from physgen import PhysgenError
from physgen.data import Trajectories
from physgen.data.trajectories import flatten_episodes
from physgen.envs import get_task
from physgen.envs.fork import ARENA, DT, MAX_SPEED
from physgen.envs.rollout import episode_seeds, expert_policy, rollout_jax
from physgen.policies.ppo import PPOConfig
from physgen.world_models.data import Frames, frames_from
from physgen.world_models.dream import DreamConfig
from physgen.world_models.online import GymCollector, OnlineConfig, Setup, collect, start_learning, train_online
from physgen.world_models.rssm import RSSMConfig
from physgen.world_models.train import abstract_model

TINY_RSSM = RSSMConfig.of(deter=16, hidden=16, stoch=4, batch_size=4, sequence_length=8)
TINY_PPO = PPOConfig(total_steps=64, num_envs=4, rollout_steps=16, minibatches=2, epochs=1)


@pytest.fixture(scope="module")
def fork_episodes():
    task = get_task("fork")
    return Trajectories.from_steps(**flatten_episodes(task, rollout_jax(task, expert_policy(task), 0, 3)))


def _setup(online: OnlineConfig, task_name: str = "fork") -> Setup:
    task = get_task(task_name)
    return Setup(task, abstract_model(TINY_RSSM, task.obs_dim, task.act_dim)[0], TINY_PPO, DreamConfig(), online)


def test_collected_steps_are_replay_frames_that_follow_the_dynamics():
    online = OnlineConfig(real_steps=450, envs=3, collect_steps=150)  # past fork's 100-step horizon: resets
    setup = _setup(online)
    learning = start_learning(setup, None, jax.random.key(0))
    learning, mean_return = collect(setup, learning, jax.random.key(1))
    size = int(learning.size)
    obs, actions, rewards, terminals, first = (np.asarray(x)[:size] for x in learning.replay)
    assert not np.asarray(learning.replay.first)[size:].any()
    resets = int(first.sum()) - online.envs  # every environment's segment opens with a first frame
    assert resets >= online.envs and size == online.envs * (1 + online.collect_steps) + resets
    assert np.isfinite(mean_return)
    arrived = np.flatnonzero(~first)
    assert first[0] and (arrived > 0).all()
    # fork: the position moves by the commanded velocity, which the observation also reports
    expected = np.clip(obs[arrived - 1, :2] + DT * MAX_SPEED * actions[arrived], -ARENA, ARENA)
    np.testing.assert_allclose(obs[arrived, :2], expected, atol=1e-5)
    np.testing.assert_allclose(obs[arrived, 2:4], actions[arrived], atol=1e-6)
    assert (actions[first] == 0).all() and (rewards[first] == 0).all()
    # an episode that ended (terminal, or the horizon) is followed by a reset frame
    ended = np.flatnonzero(terminals > 0)
    assert first[ended[ended + 1 < size] + 1].all()


def test_returns_count_the_whole_episode_when_it_spans_collections():
    online = OnlineConfig(real_steps=120, envs=1, collect_steps=60)  # fork's episodes last up to 100 steps
    setup = _setup(online)
    learning = start_learning(setup, None, jax.random.key(0))
    learning, _ = collect(setup, learning, jax.random.key(1))
    boundary = int(learning.size)
    learning, mean_return = collect(setup, learning, jax.random.key(2))
    rewards, first = (np.asarray(x)[: int(learning.size)] for x in (learning.replay.rewards, learning.replay.first))
    # by hand from the replay: an episode ends where a reset frame follows (the second collection's own first
    # frame is where it took over, not a reset)
    returns, started, total = [], 0, 0.0
    for i in range(1, len(first)):
        if first[i] and i != boundary:
            returns.append((started, i, total))
            started, total = i, 0.0
        total += rewards[i]
    second = [r for start, end, r in returns if end > boundary]
    assert any(start < boundary for start, end, _ in returns if end > boundary)  # one spans both collections
    np.testing.assert_allclose(float(mean_return), np.mean(second), rtol=1e-5)


def test_gymnasium_collection_records_what_each_environment_did():
    online = OnlineConfig(real_steps=160, envs=2, collect_steps=80)  # random hopper policies fall within 80 steps
    setup, seeds = _setup(online, "hopper"), [0, 1]
    collector = GymCollector(setup, seeds)
    starts = [start_learning(setup, None, jax.random.key(s)) for s in seeds]
    learning = jax.tree.map(lambda *x: jnp.stack(x), *starts)
    learning, returns = collector.collect(learning, jnp.stack([jax.random.key(5), jax.random.key(6)]))
    collector.close()
    assert returns.shape == (2,) and np.isfinite(returns).all()
    # seed 1's first environment, replayed by hand with the recorded actions: its frames come first in the segment
    replay = Frames(*(np.asarray(x[1]) for x in learning.replay))
    env = setup.task.make_env()
    obs = env.reset(seed=int(episode_seeds(1, online.envs)[0]))[0]
    np.testing.assert_allclose(replay.observations[0], obs, atol=1e-6)
    i, resets = 0, 0
    for _ in range(online.collect_steps):
        obs, reward, terminated, truncated, _ = env.step(replay.prev_actions[i + 1])
        i += 1
        assert not replay.first[i] and replay.terminals[i] == terminated
        np.testing.assert_allclose(replay.observations[i], obs, atol=1e-5)
        np.testing.assert_allclose(replay.rewards[i], reward, rtol=1e-6)
        if terminated or truncated:
            obs, i, resets = env.reset()[0], i + 1, resets + 1
            assert replay.first[i] and not replay.prev_actions[i].any()
            np.testing.assert_allclose(replay.observations[i], obs, atol=1e-6)
    assert resets >= 1 and replay.first[i + 1]  # the second environment's frames follow


def test_the_offline_start_puts_the_expert_data_first(fork_episodes):
    setup = _setup(OnlineConfig(real_steps=64, envs=2, collect_steps=32, offline_start=True))
    offline = frames_from(fork_episodes)
    learning = start_learning(setup, offline, jax.random.key(0))
    held = offline.first.shape[0]
    assert int(learning.size) == held
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a)[:held], np.asarray(b)), learning.replay,
                 offline)
    learning, _ = collect(setup, learning, jax.random.key(1))
    assert int(learning.size) == held + 2 * 33 and bool(learning.replay.first[held])


@pytest.mark.parametrize("task_name", ["fork", "hopper"])  # compiled whole, and collecting from Python
def test_online_ppo_with_a_world_model_is_seeded_and_reports_at_its_points(task_name):
    task = get_task(task_name)
    online = OnlineConfig(real_steps=128, envs=2, collect_steps=16, model_steps=2, dream_updates=1, offline_start=False,
                          curve_points=2)
    calls = []

    def run(seeds, curve_points):
        return train_online(task, TINY_RSSM, TINY_PPO, DreamConfig(horizon=8, windows=2),
                            dataclasses.replace(online, curve_points=curve_points), seeds,
                            callback=lambda steps, result: calls.append(steps))

    # again in stretches of 1, 1 and 2 of the 4 iterations (the short ones padded): where it stops changes nothing
    first, again = run([0, 1], 2), run([0, 1], 3)
    assert calls == [64, 128, 32, 64, 128]
    np.testing.assert_array_equal(first.history.model_loss, again.history.model_loss)
    assert first.history.model_loss.shape == (2, online.iterations) and np.isfinite(first.history.model_loss).all()
    assert np.isnan(first.history.real_return[:, -1]).all()  # nothing is collected after the last iteration
    jax.tree.map(np.testing.assert_array_equal, first.learners.params, again.learners.params)
    jax.tree.map(np.testing.assert_array_equal, first.model_params, again.model_params)
    seed0, seed1 = (jax.tree.leaves(jax.tree.map(lambda x: x[i], first.learners.params)) for i in (0, 1))
    assert any(not np.array_equal(a, b) for a, b in zip(seed0, seed1, strict=True))


def test_bad_online_settings_are_refused():
    with pytest.raises(PhysgenError, match="below one iteration"):
        OnlineConfig(real_steps=100, envs=2, collect_steps=64)
    with pytest.raises(PhysgenError, match="curve_points"):
        OnlineConfig(real_steps=2048, envs=16, collect_steps=64, curve_points=3)
    with pytest.raises(PhysgenError, match="model_steps"):
        OnlineConfig(model_steps=0)
    with pytest.raises(PhysgenError, match="expert data"):
        train_online(get_task("fork"), TINY_RSSM, TINY_PPO, DreamConfig(), OnlineConfig(offline_start=True), [0])
