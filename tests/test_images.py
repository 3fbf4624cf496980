"""Image observations: the tasks' cameras, the encoder, and image policies from data to actions."""

from types import SimpleNamespace
from typing import NamedTuple

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from physgen.bench.failures import fit_support
from physgen.bench.units import Evaluation
from physgen.control import Controller, export_checkpoint, load_exported
from physgen.data import Normalizer, WindowBatch, generate_dataset, load_dataset
from physgen.envs import get_task
from physgen.envs.images import SUPERSAMPLE, camera, image_shape
from physgen.envs.rollout import (episode_returns, episode_seeds, expert_policy, random_policy, rollout_jax,
                                 run_episodes, step_key)
from physgen.errors import PhysgenError
from physgen.policies import ChunkingAgent, TrainedPolicies, act, save_policy
from physgen.policies.encoder import Conv2d, ImageEncoder, random_shift, spatial_softmax
from physgen.policies.policy import Policy, PolicyConfig, PolicyState
from physgen.policies.train import fit_to_observations


@pytest.mark.parametrize("kernel, stride", [(3, 1), (3, 2), (5, 2)])
def test_fast_conv2d_equals_lax_conv(kernel, stride):
    fast = Conv2d(3, 8, kernel, stride, fast=True, rngs=nnx.Rngs(0))
    fast.bias[...] = jax.random.normal(jax.random.key(1), (8,))
    reference = Conv2d(3, 8, kernel, stride, fast=False, rngs=nnx.Rngs(0))
    reference.bias[...] = fast.bias[...]
    x = jax.random.normal(jax.random.key(2), (2, 9, 10, 3))
    assert fast(x).shape == (2, -(-9 // stride), -(-10 // stride), 8)
    np.testing.assert_allclose(fast(x), reference(x), rtol=1e-5, atol=1e-5)


def test_spatial_softmax_finds_a_peak_and_centres_a_flat_map():
    features = jnp.zeros((1, 5, 9, 2)).at[0, 1, 6, 0].set(100.0)  # channel 0 peaks at row 1, column 6
    keypoints = np.asarray(spatial_softmax(features))[0]
    np.testing.assert_allclose(keypoints, [np.linspace(-1, 1, 9)[6], 0.0, np.linspace(-1, 1, 5)[1], 0.0], atol=1e-6)


def test_random_shift_moves_each_history_alike_by_at_most_the_shift_and_is_seeded():
    frames = jnp.zeros((64, 12, 12, 1)).at[:, 6, 5].set(1.0)
    shifted = np.asarray(random_shift(frames, jax.random.key(0), 2))
    rows, cols = (np.argwhere(shifted[..., 0] == 1.0)[:, i] for i in (1, 2))
    assert len(rows) == 64  # the dot is never cut off: one pixel per frame
    assert set(rows - 6) == set(cols - 5) == {-2, -1, 0, 1, 2}
    np.testing.assert_array_equal(shifted, random_shift(frames, jax.random.key(0), 2))
    grouped = np.asarray(random_shift(frames, jax.random.key(1), 2, group=4))  # 16 histories of 4 frames
    dots = np.argwhere(grouped[..., 0] == 1.0)[:, 1:].reshape(16, 4, 2)
    assert (dots == dots[:, :1]).all() and len(np.unique(dots[:, 0], axis=0)) > 1


def test_the_camera_is_the_task_rendered_and_averaged_down():
    task, state_task = get_task("fork", obs="image"), get_task("fork")
    assert task.name == "fork-image" and image_shape(task) == (32, 32, 3)
    state, obs = task.functional.reset(jax.random.key(3))
    big = np.asarray(state_task.functional.render(state, 32 * SUPERSAMPLE), np.float64)
    expected = np.round(big.reshape(32, SUPERSAMPLE, 32, SUPERSAMPLE, 3).mean(axis=(1, 3)))
    assert obs.dtype == jnp.uint8
    np.testing.assert_array_equal(np.asarray(obs).reshape(32, 32, 3), expected)
    # fork's point mass is smaller than a pixel at 32, and still shows
    hidden = state._replace(pos=jnp.array([1.4, -1.4]))
    assert not np.array_equal(camera(state_task.functional.render, state), camera(state_task.functional.render,
                                                                                   hidden))
    step = task.functional.step(state, jnp.zeros(2))
    np.testing.assert_array_equal(step.obs, camera(state_task.functional.render, step.state))
    env = task.make_env()
    gym_obs, _ = env.reset(seed=5)
    assert gym_obs.dtype == np.uint8 and env.observation_space.contains(gym_obs)


def test_image_variants_are_found_by_obs_and_other_tasks_are_refused():
    assert {get_task(name, obs="image").name for name in ("fork", "maze", "push")} == {
        "fork-image", "maze-image", "push-image"}
    with pytest.raises(PhysgenError, match="hopper.*no image variant.*fork-image"):
        get_task("hopper", obs="image")


def test_image_policies_take_their_size_from_the_task_and_refuse_another():
    config = fit_to_observations(get_task("push-image"), PolicyConfig.of(method="bc"))
    assert config.vision.image_size == 32
    assert fit_to_observations(get_task("push"), PolicyConfig()).vision.image_size == 0
    with pytest.raises(PhysgenError, match="image_size 24.*--obs image"):
        fit_to_observations(get_task("push"), PolicyConfig.of(image_size=24))


def test_returns_alone_are_those_of_the_recorded_episodes():
    """The reference scores' returns, computed without drawing the frames, are the recorded episodes' returns."""
    task = get_task("fork-image")
    for policy in (random_policy(task), expert_policy(task)):
        episodes = rollout_jax(task, policy, 3, 4)
        np.testing.assert_array_equal(episode_returns(task, policy, 3, 4), [e.episode_return for e in episodes])


def test_image_datasets_hold_the_frames_as_uint8_and_compressed(minari_root):
    task = get_task("maze-image")
    path = generate_dataset(task, episodes=2, seed=4)
    trajectories = load_dataset(task, path.name).trajectories
    with h5py.File(path / "data" / "main_data.hdf5") as file:
        assert file["episode_1/observations"].compression == "gzip"
    episodes = rollout_jax(task, expert_policy(task), 4, 2)
    assert trajectories.observations.dtype == jnp.uint8
    np.testing.assert_array_equal(trajectories.observations[: len(episodes[0].actions)],
                                  episodes[0].observations[:-1])


def test_the_encoder_runs_once_per_chunk_not_per_denoising_step(monkeypatch):
    config = PolicyConfig.of(method="diffusion", image_size=16, obs_steps=2, inference_steps=5, hidden=32)
    policy, params = Policy.create(config, 16 * 16 * 3, 2, jax.random.key(0))
    calls = []
    encode = ImageEncoder.__call__
    monkeypatch.setattr(ImageEncoder, "__call__", lambda self, frames, *a: calls.append(frames.shape) or
                        encode(self, frames, *a))
    chunk = jax.jit(policy.sample, static_argnums=3)(params, jnp.zeros((3, 2, 16 * 16 * 3)), jax.random.key(1), 5)
    assert chunk.shape == (3, 16, 2) and calls == [(6, 16, 16, 3)]


def test_an_image_policy_learns_where_a_dot_is():
    """BC through the encoder: the action is the position of a dot in the frame, which only the pixels tell."""
    size, n = 16, 512
    positions = jax.random.randint(jax.random.key(0), (n, 2), 2, size - 2)
    frames = jnp.full((n, size, size, 3), -1.0).at[jnp.arange(n), positions[:, 0], positions[:, 1]].set(1.0)
    targets = (positions / (size - 1) * 2 - 1).astype(jnp.float32)
    config = PolicyConfig.of(method="bc", image_size=size, obs_steps=1, action_steps=2, exec_steps=1, hidden=64)
    policy, params = Policy.create(config, size * size * 3, 2, jax.random.key(1))
    batch = WindowBatch(frames.reshape(n, 1, -1), jnp.repeat(targets[:, None], 2, axis=1))
    optimizer = optax.adam(3e-3)

    @jax.jit
    def step(params, opt_state, key):
        loss, grads = jax.value_and_grad(policy.loss)(params, batch, key)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state, losses = optimizer.init(params), []
    for i in range(300):
        params, opt_state, loss = step(params, opt_state, jax.random.key(i))
        losses.append(float(loss))
    variance = float(jnp.var(targets, axis=0).mean())  # the loss of predicting the mean position
    assert np.mean(losses[-20:]) < 0.05 * variance, (losses[0], np.mean(losses[-20:]), variance)


def test_an_image_policy_runs_in_the_controller_and_the_export_as_in_the_rollouts(tmp_path):
    """A random image policy on push-image: fed the frames of its own rollouts, the Controller takes the actions the
    rollout engine took, and its checkpoint's export samples the chunks the policy samples."""
    task = get_task("push-image")
    config = PolicyConfig.of(method="flow", image_size=32, hidden=32, depth=2, time_dim=16, action_steps=8,
                             exec_steps=4, inference_steps=2)
    policy, params = Policy.create(config, task.obs_dim, task.act_dim, jax.random.key(0))
    half = jnp.full(task.obs_dim, 127.5)
    state = PolicyState(params, Normalizer(half, half), Normalizer(jnp.zeros(2), jnp.ones(2)),
                        jnp.asarray(task.action_space.low), jnp.asarray(task.action_space.high))
    seeds = episode_seeds(1, 1)
    rollouts = run_episodes(task, ChunkingAgent(policy), jax.tree.map(lambda x: x[None], state), seeds)
    steps = min(int(rollouts.lengths[0, 0]), 12)
    with Controller(policy, state) as controller:
        controller.reset(seed=int(seeds[0]))
        actions = [controller.act(frame) for frame in rollouts.observations[0, 0, :steps]]
    np.testing.assert_allclose(actions, rollouts.actions[0, 0, :steps], rtol=1e-5, atol=1e-6)
    stacked = jax.tree.map(lambda x: x[None], state)
    checkpoint = save_policy(tmp_path / "seed_0", task, TrainedPolicies(policy, stacked, stacked.params,
                                                                         np.zeros((1, 0)), (0,)), 0)
    loaded = load_exported(export_checkpoint(checkpoint, tmp_path / "policy.jaxexport"))
    history = np.asarray(rollouts.observations[0, 0, 3:5], np.float32)
    expected = act(policy, state, history[None], step_key(0, 0))[0]
    np.testing.assert_allclose(loaded.act(history, step_key(0, 0)), expected, rtol=1e-5, atol=1e-5)


class Swerve(NamedTuple):
    """A toy fork agent blind to what it sees: forward at 0.9 of the top speed, sideways at its parameter for
    `turn` steps and at minus it after (0: straight at the obstacle)."""

    turn: int = 8

    def start(self, params, obs):
        return jnp.int32(0)

    def act(self, params, t, obs, key):
        return jnp.stack([jnp.where(t < self.turn, params, -params), 0.9]), t + 1


def test_image_failures_are_named_by_the_state_tasks_detectors_on_the_replayed_states():
    """The states behind fork-image's frames, replayed from the recorded actions, are fork's own along the same
    episodes; fork's detectors name the failures of a policy driving straight (mode averaging) or turning back half
    way (mode switch), as the bench records them."""
    image, state = get_task("fork-image"), get_task("fork")
    seeds, params = episode_seeds(0, 6), jnp.array([0.0, 0.8])
    frames, states = (run_episodes(task, Swerve(), params, seeds) for task in (image, state))
    expert = np.concatenate([e.observations for e in rollout_jax(image, expert_policy(image), 0, 20)])
    support = fit_support(expert[: len(expert) // 2], expert[len(expert) // 2:])
    evaluation = Evaluation(image, SimpleNamespace(metadata={}), support,
                            {"evaluation_seeds": seeds, "curve_episodes": 1})
    for i, cause in enumerate(("mode_averaging", "mode_switch")):
        record, arrays = evaluation.record("swerve", i, frames, i, [])
        np.testing.assert_array_equal(arrays["states"], states.observations[i])
        assert [e["category"] for e in record["episodes"]] == [cause] * len(seeds)
