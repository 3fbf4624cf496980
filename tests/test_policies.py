import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from physgen import PhysgenError
from physgen.data import WindowBatch, load_dataset
from physgen.envs import get_task
from physgen.envs.rollout import episode_seeds, run_episodes
from physgen.policies.agent import ChunkingAgent
from physgen.policies.policy import Policy, PolicyConfig
from physgen.policies.runner import PolicyRunner, load_policy, save_policy
from physgen.policies.train import train_policies
from physgen.world_models import RSSMConfig

TINY = dict(hidden=64, depth=2, time_dim=16, batch_size=64, steps=200, steps_per_call=50, warmup_steps=10)


@pytest.fixture(scope="module")
def fork_train(fork_dataset):
    return load_dataset(get_task("fork")).trajectories


@pytest.fixture(scope="module")
def trained(fork_train):
    task = get_task("fork")
    return {m: train_policies(task, PolicyConfig.of(method=m, **TINY), fork_train, [0], progress=False)
            for m in ("diffusion", "flow", "bc")}


@pytest.mark.parametrize("method", ["diffusion", "flow", "bc"])
def test_losses_decrease_on_a_toy_dataset(trained, method):
    losses = trained[method].losses[0]
    assert losses.shape == (4,) and losses[-1] < 0.9 * losses[0]


def test_a_flow_predicting_the_clean_chunk_learns_and_keeps_its_target_through_a_checkpoint(fork_train, tmp_path):
    task = get_task("fork")
    result = train_policies(task, PolicyConfig.of(method="flow", target="sample", **TINY), fork_train, [0],
                            progress=False)
    losses = result.losses[0]
    assert losses[-1] < 0.9 * losses[0]
    path = save_policy(tmp_path / "flow", task, result, 0)
    loaded = PolicyRunner.from_checkpoint(path, task="fork")
    assert loaded.policy.config.flow.target == "sample"
    obs = np.array([[0.1, -1.0, 0, 0, 0.0, 1.0], [0.1, -0.96, 0, 1, 0.0, 1.0]], np.float32)
    np.testing.assert_array_equal(loaded.act(obs, 5), PolicyRunner(result.policy, result.state_of(0)).act(obs, 5))


def test_training_is_seeded_and_seeds_vmap_like_separate_runs(fork_train):
    task, config = get_task("fork"), PolicyConfig.of(method="bc", **{**TINY, "steps": 50})
    together = train_policies(task, config, fork_train, [3, 4], progress=False)
    again = train_policies(task, config, fork_train, [3, 4], progress=False)
    alone = train_policies(task, config, fork_train, [4], progress=False)
    leaves = lambda t: jax.tree.leaves(t.params)  # noqa: E731
    for a, b in zip(leaves(together), leaves(again)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(leaves(together), leaves(alone)):
        np.testing.assert_allclose(a[1], b[0], rtol=1e-4, atol=1e-5)
        assert not np.allclose(a[0], a[1])


def test_checkpoint_round_trip_gives_identical_actions(trained, tmp_path):
    task = get_task("fork")
    for method, result in trained.items():
        path = save_policy(tmp_path / method, task, result, 0)
        loaded = PolicyRunner.from_checkpoint(path, task="fork")
        in_memory = PolicyRunner(result.policy, result.state_of(0))
        obs = np.array([[0.1, -1.0, 0, 0, 0.0, 1.0], [0.1, -0.96, 0, 1, 0.0, 1.0]], np.float32)
        np.testing.assert_array_equal(loaded.act(obs, 5), in_memory.act(obs, 5))
        _, _, meta = load_policy(path)
        assert meta["config"]["method"] == method and meta["seed"] == 0


def test_sampler_compiles_once_and_actions_stay_in_bounds(trained):
    runner = PolicyRunner(trained["flow"].policy, trained["flow"].state_of(0))
    rng = np.random.default_rng(0)
    for i in range(5):
        chunk = runner.act(rng.normal(size=(2, 6)).astype(np.float32) * 3, i)
        assert chunk.shape == (16, 2) and np.all(np.abs(chunk) <= 1.0)
    assert runner._act._cache_size() == 1


@pytest.fixture(scope="module")
def runners(trained):
    return {method: PolicyRunner(result.policy, result.state_of(0)) for method, result in trained.items()}


@pytest.mark.parametrize("method", ["diffusion", "flow", "bc"])
@settings(max_examples=30, deadline=None)
@given(obs=hnp.arrays(np.float32, (2, 6), elements=st.floats(-2.0**100, 2.0**100, width=32)))  # ~1e30
def test_any_finite_observation_gives_finite_bounded_actions(runners, method, obs):
    """Observations far outside the data (fork's arena is +-1.5) once sampled NaN chunks: normalized to
    thousands, they blew up FiLM's products and the flow's Euler steps."""
    chunk = runners[method].act(obs, 0)
    assert chunk.shape == (16, 2) and np.all(np.isfinite(chunk)) and np.all(np.abs(chunk) <= 1.0)


def test_the_issue_observations_give_finite_actions(runners):
    obs = np.array([[0.1, -1.0, 0, 0, 60.0, 1.0], [0.1, -0.96, 0, 1, 340.0, 1.0]], np.float32)  # goal x at 60-340
    for method, runner in runners.items():
        for seed in range(5):
            chunk = runner.act(obs, seed)
            assert np.all(np.isfinite(chunk)) and np.all(np.abs(chunk) <= 1.0), method


def test_a_broken_policy_is_refused_not_passed_on(trained):
    state = trained["bc"].state_of(0)
    broken = state._replace(params=jax.tree.map(lambda x: x * np.nan, state.params))
    with pytest.raises(PhysgenError, match="the policy produced a non-finite chunk; its parameters are corrupt"):
        PolicyRunner(trained["bc"].policy, broken).act(np.zeros((2, 6), np.float32), 0)


def test_diffusion_steps_are_chosen_at_sampling_time(trained):
    result = trained["diffusion"]
    obs = np.zeros((2, 6), np.float32)
    for steps in (1, 5, 100):
        assert PolicyRunner(result.policy, result.state_of(0), steps=steps).act(obs, 0).shape == (16, 2)
    with pytest.raises(ValueError, match="between 1 and the 100 training steps"):
        PolicyRunner(result.policy, result.state_of(0), steps=101)


def test_bad_observations_and_foreign_checkpoints_are_refused(trained, tmp_path):
    runner = PolicyRunner(trained["bc"].policy, trained["bc"].state_of(0))
    with pytest.raises(PhysgenError, match="shape \\(3, 6\\), the policy expects \\(2, 6\\)"):
        runner.act(np.zeros((3, 6)), 0)
    with pytest.raises(PhysgenError, match="NaN or Inf"):
        runner.act(np.full((2, 6), np.nan), 0)
    path = save_policy(tmp_path / "bc", get_task("fork"), trained["bc"], 0)
    with pytest.raises(PhysgenError, match="trained on task 'fork', not 'maze'"):
        PolicyRunner.from_checkpoint(path, task="maze")


def test_gymnasium_evaluation_matches_the_compiled_one(trained):
    """The same protocol stepped through `physgen/Fork-v0` gives the episodes of the all-JAX evaluation."""
    task, result = get_task("fork"), trained["flow"]
    seeds = episode_seeds(10_000, 4)
    compiled = run_episodes(task, ChunkingAgent(result.policy), result.states, seeds)
    stepped = run_episodes(dataclasses.replace(task, functional=None), ChunkingAgent(result.policy), result.states,
                           seeds)
    np.testing.assert_array_equal(stepped.lengths, compiled.lengths)
    np.testing.assert_allclose(stepped.returns, compiled.returns, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(stepped.success, compiled.success)
    for name in task.events:
        np.testing.assert_array_equal(stepped.events[name], compiled.events[name])


def test_bad_configs_are_refused():
    with pytest.raises(PhysgenError, match="method must be one of diffusion, flow, bc"):
        PolicyConfig.of(method="gan")
    with pytest.raises(PhysgenError, match="steps must be at least 1, got 0"):
        PolicyConfig.of(steps=0)
    with pytest.raises(PhysgenError, match="hidden must be at least 1, got -3"):
        PolicyConfig.of(hidden=-3)
    with pytest.raises(PhysgenError, match="exec_steps"):
        PolicyConfig.of(exec_steps=17)
    with pytest.raises(PhysgenError, match="divisible by 4"):
        PolicyConfig.of(network="unet", action_steps=10)
    for time_dim in (2, 3, 17):  # sin and cos halves: an odd size broke the first layer, 2 divided 0 by 0
        with pytest.raises(PhysgenError, match=f"time_dim must be even and at least 4 .*, got {time_dim}$"):
            PolicyConfig.of(time_dim=time_dim)


def test_the_smallest_time_dim_trains():
    config = PolicyConfig.of(method="flow", hidden=8, depth=1, time_dim=4, action_steps=4, exec_steps=2)
    policy, params = Policy.create(config, 3, 2, jax.random.key(0))
    batch = WindowBatch(jnp.ones((5, 2, 3)), jnp.zeros((5, 4, 2)))
    assert np.isfinite(policy.loss(params, batch, jax.random.key(1)))


def test_configs_are_nested_by_concern_and_read_and_write_flat():
    config = PolicyConfig.of(method="flow", steps=20, exec_steps=1, hidden=8, unet_dims=[32, 64])
    assert (config.optim.steps, config.chunking.exec_steps, config.net.hidden, config.net.unet_dims) == (20, 1, 8, (32, 64))
    flat = config.as_flat()
    assert len(flat) == 40 and flat["steps"] == 20 and flat["exec_steps"] == 1 and "optim" not in flat
    assert PolicyConfig.from_dict(json.loads(json.dumps(flat))) == config  # through JSON, lists back to tuples
    assert config.replace(steps=5).optim == dataclasses.replace(config.optim, steps=5)
    assert config.replace(steps=5).chunking is config.chunking  # the other parts untouched
    with pytest.raises(PhysgenError, match="PolicyConfig has no field stepz; its fields: method, obs_steps"):
        PolicyConfig.of(stepz=5)
    with pytest.raises(PhysgenError, match="exec_steps \\(T_a=4\\) must be between 1 and action_steps \\(T_p=2\\)"):
        config.replace(action_steps=2, exec_steps=4)
    with pytest.raises(PhysgenError, match="batch_size must be at least 1"):
        PolicyConfig.of(batch_size=0)
    for rate in (float("inf"), "0.1", True):
        with pytest.raises(PhysgenError, match="ensemble \\(the temporal ensembling rate k\\) must be a finite number"):
            PolicyConfig.of(ensemble=rate)
    # the optimisation part is shared: the world models' training reads the same fields
    assert RSSMConfig.of(steps=7).optim.steps == 7 and type(RSSMConfig().optim) is type(config.optim)
