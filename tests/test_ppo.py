import json
from importlib import resources
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.stats import norm

from physgen import PhysgenError
from physgen.data import Normalizer
from physgen.envs import FunctionalEnv, Task, TimeStep, get_task
from physgen.envs.base import box
from physgen.envs.rollout import rollout_gym
from physgen.policies.ppo import (PPOConfig, deterministic_policy, load_ppo, load_ppo_policy, save_ppo,
                                  train_ppo)
from physgen.policies.ppo_core import (ActorCritic, RunningStats, clipped_surrogate, clipped_value_loss, gae,
                                       gaussian_log_prob, orthogonal)

# Small rollouts so that tiny tasks learn in seconds; the algorithm is the default one.
FORK_CONFIG = PPOConfig(total_steps=100_000, num_envs=8, rollout_steps=128, epochs=4, minibatches=4)


def column(values):
    return jnp.asarray(values, jnp.float32)[:, None]  # (T, envs=1)


def test_gae_matches_hand_computed_values_with_a_termination():
    # gamma 0.9, lambda 0.8: delta_t = r_t + 0.9 V(s_t+1) (1 - term_t) - V(s_t); A_t = delta_t + 0.72 (1 - done_t) A_t+1
    # deltas: 1 + .54 - .5 = 1.04, 2 - .6 = 1.4 (terminated), 3 + .72 - .7 = 3.02, 4 + .81 - .8 = 4.01
    advantages, returns = gae(column([1, 2, 3, 4]), column([.5, .6, .7, .8]), column([.6, 9.0, .8, .9]),
                              column([0, 1, 0, 0]), column([0, 1, 0, 0]), gamma=0.9, lam=0.8)
    expected = [1.04 + 0.72 * 1.4, 1.4, 3.02 + 0.72 * 4.01, 4.01]
    np.testing.assert_allclose(advantages[:, 0], expected, rtol=1e-6)
    np.testing.assert_allclose(returns[:, 0], np.asarray(expected) + [.5, .6, .7, .8], rtol=1e-6)


def test_gae_bootstraps_a_truncated_episode_from_its_final_observation():
    # Step 1 is truncated: delta_1 = 2 + 0.9 * 9.0 - 0.6 = 9.5, and the recursion still stops there.
    advantages, _ = gae(column([1, 2, 3, 4]), column([.5, .6, .7, .8]), column([.6, 9.0, .8, .9]),
                        column([0, 0, 0, 0]), column([0, 1, 0, 0]), gamma=0.9, lam=0.8)
    np.testing.assert_allclose(advantages[:, 0], [1.04 + 0.72 * 9.5, 9.5, 3.02 + 0.72 * 4.01, 4.01], rtol=1e-6)


@pytest.mark.parametrize("ratio, advantage, expected", [
    (1.5, 2.0, 2.4),    # positive advantage: the gain is capped at (1 + 0.2) A
    (0.5, 2.0, 1.0),    # ... but a lower ratio is not lifted
    (0.5, -2.0, -1.6),  # negative advantage: capped at (1 - 0.2) A
    (1.5, -2.0, -3.0),  # ... but a higher ratio is punished in full
    (1.1, 3.0, 3.3),    # inside the trust region: r A
])
def test_clipped_surrogate_closed_form(ratio, advantage, expected):
    assert float(clipped_surrogate(jnp.float32(ratio), jnp.float32(advantage), 0.2)) == pytest.approx(expected)


def test_clipped_value_loss_and_log_prob_closed_form():
    # v = 2, v_old = 1, R = 3: clipped v = 1.2; 0.5 max((2 - 3)^2, (1.2 - 3)^2) = 1.62
    assert float(clipped_value_loss(jnp.float32(2.0), jnp.float32(1.0), jnp.float32(3.0), 0.2)) == pytest.approx(1.62)
    action, mean, log_std = np.array([0.3, -1.0]), np.array([0.1, 0.5]), np.array([-0.5, 0.2])
    expected = norm.logpdf(action, mean, np.exp(log_std)).sum()
    assert float(gaussian_log_prob(jnp.asarray(action), jnp.asarray(mean), jnp.asarray(log_std))) == pytest.approx(
        expected, rel=1e-5)


def test_running_stats_match_numpy_over_batches():
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(300, 4))
    stats = RunningStats.create((4,))
    for batch in np.split(x, 6):
        stats = stats.update(jnp.asarray(batch))
    np.testing.assert_allclose(stats.mean, x.mean(0), rtol=1e-4)
    np.testing.assert_allclose(stats.var, x.var(0), rtol=1e-4)


def reach_task() -> Task:
    """A tiny pure-JAX task for the learning smoke test: move a 2-D point to a random goal (progress reward,
    +1 on arrival). Uniform random actions score about 0; going straight to the goal scores about 2."""

    class State(NamedTuple):
        pos: jax.Array
        goal: jax.Array
        t: jax.Array
        done: jax.Array

    def obs(state):
        return jnp.concatenate([state.pos, state.goal])

    def reset(key):
        pos, goal = jax.random.uniform(key, (2, 2), minval=-1.0, maxval=1.0)
        state = State(pos, goal, jnp.int32(0), jnp.bool_(False))
        return state, obs(state)

    def step(state, action):
        pos = state.pos + 0.1 * jnp.clip(action, -1.0, 1.0)
        arrived = jnp.linalg.norm(pos - state.goal) < 0.1
        reward = jnp.linalg.norm(state.pos - state.goal) - jnp.linalg.norm(pos - state.goal) + arrived
        truncated = (state.t + 1 >= 50) & ~arrived
        live = ~state.done
        new = State(jnp.where(live, pos, state.pos), state.goal, state.t + live, state.done | arrived | truncated)
        return TimeStep(new, obs(new), jnp.where(live, reward, 0.0), arrived & live, truncated & live,
                        {"goal_reached": arrived & live})

    return Task(name="reach", summary="", observation_space=box(-2, 2, 4), action_space=box(-1, 1, 2),
                control_hz=10.0, horizon=50, success_rule="", events=("goal_reached",), demonstrations="",
                gym_id="", make_env=None, success=lambda events, *_: bool(np.any(events["goal_reached"])),
                functional=FunctionalEnv(reset, step, None, None))


def test_ppo_learns_a_tiny_task():
    result = train_ppo(reach_task(), FORK_CONFIG, seeds=[0, 1], progress=False)
    means = [np.mean(returns) for returns in result["eval_returns"]]
    assert min(means) >= 1.5, means
    first = [r for r in result["curve"][0]["mean_return"] if r is not None]
    assert np.mean(first) < 0.5


@pytest.fixture(scope="module")
def fork_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ppo_fork")
    return train_ppo(get_task("fork"), FORK_CONFIG, seeds=[0, 1], out_dir=out, progress=False), out


def test_checkpoint_policy_replays_the_training_evaluation(fork_run):
    # The saved numpy policy, stepped through fork's Gymnasium wrapper on the evaluation seeds, gives the returns
    # that training measured in JAX.
    result, out = fork_run
    policy = load_ppo_policy(out / "seed_1")
    episodes = rollout_gym(get_task("fork"), policy, seed=1 + 1_000_000, episodes=FORK_CONFIG.eval_episodes)
    np.testing.assert_allclose([e.episode_return for e in episodes], result["eval_returns"][1], rtol=1e-3, atol=1e-3)


def test_checkpoint_round_trip_gives_identical_actions(tmp_path):
    task, config = get_task("fork"), PPOConfig(hidden=(32, 16))
    params = nnx.split(ActorCritic(task.obs_dim, task.act_dim, config.hidden, nnx.Rngs(5)))[1]
    rng = np.random.default_rng(0)
    dim = task.obs_dim
    normalizer = Normalizer(jnp.asarray(rng.normal(size=dim), jnp.float32), jnp.asarray(rng.uniform(0.5, 2, dim), jnp.float32))
    save_ppo(tmp_path / "ck", task, config, params, normalizer, seed=7)
    obs = rng.normal(size=(16, task.obs_dim)).astype(np.float32)
    np.testing.assert_array_equal(load_ppo_policy(tmp_path / "ck")(obs),
                                  deterministic_policy(task, config, params, normalizer)(obs))
    _, loaded_config, _, _, meta = load_ppo(tmp_path / "ck")
    assert loaded_config == config and meta["seed"] == 7


def test_same_seed_same_parameters(tmp_path):
    # Seeds are data: seed 1 trained in the first or the second vmap slot ends with the same parameters.
    config = PPOConfig(total_steps=2048, num_envs=4, rollout_steps=64, epochs=2, minibatches=2, eval_episodes=0)
    for order in ((0, 1), (1, 0)):
        train_ppo(get_task("fork"), config, seeds=list(order), out_dir=tmp_path / str(order[0]), progress=False)
    first, again = (jax.tree.leaves(load_ppo(tmp_path / slot / "seed_1")[2]) for slot in ("0", "1"))
    assert all(np.array_equal(x, y) for x, y in zip(first, again))
    other = jax.tree.leaves(load_ppo(tmp_path / "1" / "seed_0")[2])
    assert not any(np.array_equal(x, y) for x, y in zip(first, other) if x.size > 1)


def test_orthogonal_init_is_the_sign_corrected_qr():
    key = jax.random.key(3)
    q, r = np.linalg.qr(np.asarray(jax.random.normal(key, (64, 16))))
    expected = q * np.sign(np.diag(r))
    np.testing.assert_allclose(orthogonal(1.0)(key, (64, 16)), expected, atol=1e-5)
    np.testing.assert_allclose(orthogonal(2.0)(key, (16, 64)), 2 * expected.T, atol=1e-5)


def test_bad_configs_are_refused():
    with pytest.raises(PhysgenError, match="raise --steps"):
        train_ppo(get_task("fork"), PPOConfig(total_steps=100), seeds=[0])
    with pytest.raises(PhysgenError, match="minibatches"):
        train_ppo(get_task("fork"), PPOConfig(total_steps=1000, rollout_steps=100, minibatches=32), seeds=[0])
    with pytest.raises(PhysgenError, match="distinct"):
        train_ppo(get_task("fork"), FORK_CONFIG, seeds=[1, 1])


def test_shipped_hopper_expert_reaches_its_documented_return():
    folder = resources.files("physgen") / "experts" / "hopper"
    documented = json.loads((folder / "returns.json").read_text())["expert"]
    episodes = rollout_gym(get_task("hopper"), load_ppo_policy(folder / "expert"), seed=0, episodes=3)
    assert np.mean([e.episode_return for e in episodes]) >= 0.8 * documented["mean_return"]
