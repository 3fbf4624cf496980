import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from physgen import PhysgenError
from physgen.data import Trajectories
from physgen.data.trajectories import flatten_episodes
from physgen.envs import get_task
from physgen.envs.rollout import expert_policy, rollout_jax, run_episodes
from physgen.world_models import distributions as D
from physgen.world_models.data import Frames, frames_from, sample_frames
from physgen.world_models.evaluate import open_loop_errors, plot_open_loop
from physgen.world_models.mpc import MPC, MPCConfig, optimize
from physgen.world_models.rssm import RSSM, RSSMConfig, fit_scales
from physgen.world_models.train import load_world_model, save_world_model, train_world_models
from physgen.world_models.vae import VAE, VAEConfig, render_frames

TINY = RSSMConfig.of(latent="categorical", deter=16, hidden=16, stoch=4, classes=4, batch_size=4, sequence_length=8,
                  steps=40, steps_per_call=20)


@pytest.fixture(scope="module")
def fork_data():
    """20 expert episodes of fork, as `load_dataset` would return them (without writing a Minari dataset)."""
    task = get_task("fork")
    return Trajectories.from_steps(**flatten_episodes(task, rollout_jax(task, expert_policy(task), 0, 20)))


@pytest.fixture(scope="module")
def trained(fork_data):
    return train_world_models(get_task("fork"), TINY, fork_data, [0, 1], progress=False)


def test_symlog_symexp_round_trip():
    x = jnp.array([-1e6, -3.0, -1e-3, 0.0, 0.5, 10.0, 1e6])
    np.testing.assert_allclose(D.symexp(D.symlog(x)), x, rtol=1e-5)
    np.testing.assert_allclose(D.symlog(x)[1:6], [-np.log(4.0), -np.log1p(1e-3), 0.0, np.log(1.5), np.log(11.0)],
                               rtol=1e-6)


def test_gaussian_kl_matches_the_closed_form():
    rng = np.random.default_rng(0)
    m1, m2 = rng.normal(size=(2, 3, 5)).astype(np.float32)
    s1, s2 = np.exp(0.3 * rng.normal(size=(2, 3, 5))).astype(np.float32)
    want = np.sum(np.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5, axis=-1)
    got = D.kl(D.Gaussian(m1, s1), D.Gaussian(m2, s2))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(D.kl(D.Gaussian(m1, s1), D.Gaussian(m1, s1)), 0.0, atol=1e-6)
    z = m1[0] + s1[0] * rng.normal(size=(200_000, 5))  # Monte Carlo: E_p[log p(z) - log q(z)]

    def log_density(mean, std):
        return np.sum(-0.5 * ((z - mean) / std) ** 2 - np.log(std), -1)

    estimate = np.mean(log_density(m1[0], s1[0]) - log_density(m2[0], s2[0]))
    np.testing.assert_allclose(estimate, got[0], rtol=0.02, atol=0.02)


def test_categorical_kl_matches_the_closed_form_and_unimix_bounds_probabilities():
    logits = 3.0 * np.random.default_rng(0).normal(size=(2, 4, 6, 5)).astype(np.float32)
    p, q = D.categorical(logits[0], 0.01), D.categorical(logits[1], 0.01)
    pp, qq = np.exp(np.asarray(p.log_probs, np.float64)), np.exp(np.asarray(q.log_probs, np.float64))
    np.testing.assert_allclose(pp.sum(-1), 1.0, rtol=1e-6)
    assert pp.min() >= 0.01 / 5 * (1 - 1e-5)
    np.testing.assert_allclose(D.kl(p, q), np.sum(pp * np.log(pp / qq), axis=(-2, -1)), rtol=1e-4)
    np.testing.assert_allclose(D.kl(p, p), 0.0, atol=1e-6)
    sample = D.sample(p, jax.random.key(1)).reshape(4, 6, 5)
    np.testing.assert_allclose(sample.sum(-1), 1.0, atol=1e-6)
    assert set(np.unique(np.round(sample, 5))) <= {0.0, 1.0}


def test_kl_balance_clips_at_free_nats_and_routes_gradients():
    def loss(post_mean, prior_mean, free):
        post, prior = D.Gaussian(post_mean, jnp.ones(4)), D.Gaussian(prior_mean, jnp.ones(4))
        return D.kl_balance(post, prior, dyn_scale=1.0, rep_scale=0.1, free_nats=free)[0]

    close, far = jnp.full(4, 0.1), jnp.full(4, 2.0)  # KL 0.02 and 8 nats
    value, grads = jax.value_and_grad(loss, argnums=(0, 1))(close, jnp.zeros(4), 1.0)
    np.testing.assert_allclose(value, 1.1, rtol=1e-6)  # both terms clipped to the free nats
    for g in grads:
        np.testing.assert_array_equal(g, 0.0)
    value, (g_post, g_prior) = jax.value_and_grad(loss, argnums=(0, 1))(far, jnp.zeros(4), 1.0)
    np.testing.assert_allclose(value, 1.1 * 8.0, rtol=1e-6)
    np.testing.assert_allclose(g_prior, -1.0 * far, rtol=1e-6)  # dKL/dprior_mean = -(post - prior), scale 1.0
    np.testing.assert_allclose(g_post, 0.1 * far, rtol=1e-6)  # the representation term, scale 0.1


@pytest.mark.parametrize("latent", ["categorical", "gaussian"])
def test_observe_imagine_shapes(latent):
    config = dataclasses.replace(TINY, latent=latent)
    model, params = RSSM.abstract(config, 6, 2)

    def run(params, obs, actions, key):
        states, posts, priors = model.observe(params, obs, actions, key)
        last = jax.tree.map(lambda x: x[-1], states)
        future, taken = model.imagine(params, last, actions[:5], key)
        by_policy = model.imagine(params, last, lambda s, k: s.deter[:2], None, 3)
        return states, posts, priors, future, taken, model.decode(params, future), model.reward(params, future), \
            model.continuation(params, future), by_policy

    shapes = jax.eval_shape(run, params, jnp.zeros((7, 6)), jnp.zeros((7, 2)), jax.random.key(0))
    states, posts, priors, future, taken, decoded, reward, cont, (by_policy, policy_actions) = shapes
    assert states.deter.shape == (7, 16) and states.stoch.shape == (7, config.stoch_size)
    assert jax.tree.map(lambda x: x.shape, posts) == jax.tree.map(lambda x: x.shape, priors)
    assert future.deter.shape == (5, 16) and future.stoch.shape == (5, config.stoch_size) and taken.shape == (5, 2)
    assert decoded.shape == (5, 6) and reward.shape == cont.shape == (5,)
    assert by_policy.stoch.shape == (3, config.stoch_size) and policy_actions.shape == (3, 2)


def test_imagining_with_the_posterior_latents_reproduces_the_observed_states(trained):
    model, params = trained.model, trained.params_of(0)
    rng = np.random.default_rng(1)
    obs = rng.normal(size=(7, 6)).astype(np.float32)
    prev_actions = rng.uniform(-1, 1, size=(7, 2)).astype(np.float32)
    prev_actions[0] = 0.0  # nothing led to the first observation
    first = np.arange(7) == 4

    @jax.jit
    def replay(params):
        states, _, _ = model.observe(params, obs, prev_actions, jax.random.key(3))
        net = model.net(params)
        # each prior step fed the posterior latent and the recorded action gives the next observed deter state
        deter = jax.vmap(lambda s, a: net.img_step(s, a, None)[0].deter)(jax.tree.map(lambda x: x[:-1], states),
                                                                         prev_actions[1:])
        # and imagination by a policy that replays the recorded actions runs the same recurrence
        start = jax.tree.map(lambda x: x[0], states)
        imagined, taken = model.imagine(params, start, lambda s, k: prev_actions[1], jax.random.key(4), 1)
        # a reset forgets the past: the state at a first frame is the one a fresh start gives
        reset = model.observe(params, obs, prev_actions, jax.random.key(3), first)[0]
        return states, deter, imagined, taken, reset

    states, deter, imagined, taken, reset = replay(params)
    np.testing.assert_allclose(deter, states.deter[1:], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(imagined.deter[0], states.deter[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(taken[0], prev_actions[1])
    np.testing.assert_allclose(reset.deter[4], states.deter[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(reset.deter[:4], states.deter[:4], rtol=1e-5, atol=1e-6)
    assert np.allclose(states.stoch.reshape(7, 4, 4).sum(-1), 1.0)


def test_frames_lay_out_episodes_with_their_first_frames():
    obs = np.arange(5, dtype=np.float32)[:, None].repeat(6, 1)
    data = Trajectories.from_steps(obs, np.ones((5, 2)), np.arange(1.0, 6.0), obs + 0.5, [0, 1, 0, 0, 1], [2, 3])
    frames = frames_from(data)
    np.testing.assert_array_equal(frames.observations[:, 0], [0, 0.5, 1.5, 2, 2.5, 3.5, 4.5])
    np.testing.assert_array_equal(frames.first, [1, 0, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(frames.rewards, [0, 1, 2, 0, 3, 4, 5])
    np.testing.assert_array_equal(frames.terminals, [0, 0, 1, 0, 0, 0, 1])
    np.testing.assert_array_equal(frames.prev_actions[:, 0], [0, 1, 1, 0, 1, 1, 1])
    windows = sample_frames(frames, jax.random.key(0), 16, 4)
    assert windows.observations.shape == (16, 4, 6) and np.all(windows.first[:, 0])
    starts = np.asarray(windows.observations[:, 0, 0])
    assert set(starts) <= {0, 0.5, 1.5, 2.0}  # every window lies inside the 7 frames


def test_training_is_seeded_and_checkpoints_round_trip(trained, fork_data, tmp_path):
    task = get_task("fork")
    again = train_world_models(task, TINY, fork_data, [0, 1], progress=False)
    jax.tree.map(np.testing.assert_array_equal, trained.params, again.params)
    first, second = (jax.tree.leaves(trained.params_of(i)) for i in (0, 1))
    assert any(not np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    assert trained.metrics["loss"].shape == (2, 2) and np.all(trained.metrics["loss"][:, -1] < 30)
    model, params, meta = load_world_model(save_world_model(tmp_path / "rssm", task, trained, 1), "fork")
    assert model == trained.model and meta["method"] == "rssm" and meta["seed"] == 1
    jax.tree.map(np.testing.assert_array_equal, params, trained.params_of(1))


def test_scales_are_fitted_from_the_data_and_standardize_observations():
    obs = np.array([[0.0, 5.0, 1.0], [2.0, 5.0, 3.0], [4.0, 5.0, 8.0]], np.float32)
    data = Trajectories.from_steps(obs, np.zeros((3, 1), np.float32), np.array([0.1, -0.3, 1.0], np.float32), obs,
                                   np.array([False, False, True]), [3])
    config = fit_scales(RSSMConfig.of(), data)
    assert config.reward_scale == pytest.approx(0.2)  # mean |reward| of the non-terminal steps
    np.testing.assert_allclose(config.obs_center, [2.0, 5.0, 4.0])
    np.testing.assert_allclose(config.obs_scale, [np.sqrt(8 / 3), 1.0, np.sqrt(26 / 3)], rtol=1e-6)  # constant: 1
    np.testing.assert_allclose(config.standardize(jnp.asarray(obs)).std(0), [1.0, 0.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(config.unstandardize(config.standardize(jnp.asarray(obs))), obs, atol=1e-5)
    assert fit_scales(config, data) == config  # what is set stays
    with pytest.raises(PhysgenError, match="obs_center and obs_scale go together"):
        RSSMConfig.of(obs_scale=(1.0,))


def test_bad_sequence_length_and_a_dataset_without_rewards_are_refused(fork_data):
    task = get_task("fork")
    with pytest.raises(PhysgenError, match="sequence_length"):
        RSSMConfig.of(sequence_length=1)
    with pytest.raises(PhysgenError, match="sequence length 100000 exceeds"):
        train_world_models(task, dataclasses.replace(TINY, sequence_length=100_000), fork_data, [0], progress=False)
    rewardless = fork_data._replace(rewards=jnp.zeros_like(fork_data.rewards))
    with pytest.raises(PhysgenError, match="no rewards"):
        train_world_models(task, TINY, rewardless, [0], progress=False)


def test_open_loop_errors_against_baselines_and_figure(trained, fork_data, tmp_path):
    result = open_loop_errors(trained.model, trained.params, fork_data, fork_data, context=5, horizon=6, chunks=16)
    assert result.rssm.shape == (2, 6) and result.last.shape == result.linear.shape == (6,)
    assert result.imagined.shape == (2, 16, 6, 6) and result.linear_path.shape == (16, 6, 6)
    assert np.all(np.isfinite(result.rssm)) and result.last[-1] > 0.1
    assert result.linear[-1] < 1e-3  # fork's dynamics are affine in (o, a): least squares recovers them
    np.testing.assert_allclose(result.linear_path[:, -1], result.chunks.next_observations[:, -1], atol=1e-3)
    est = result.interval(6)
    assert est.low <= est.estimate <= est.high and "6 steps" in result.summary((1, 6))
    assert plot_open_loop(tmp_path / "open_loop.png", result).stat().st_size > 10_000


@pytest.mark.parametrize("planner", ["cem", "mppi"])
def test_planners_climb_a_known_objective(planner):
    config = MPCConfig(planner=planner, horizon=4, population=64, elites=8, iterations=5, temperature=0.05)
    target = jnp.array([[0.5, -0.25]] * 4)

    def score(plans):
        return -jnp.sum((plans - target) ** 2, axis=(1, 2))

    best = optimize(score, jnp.zeros((4, 2)), jax.random.key(0), config, -jnp.ones(2), jnp.ones(2))
    assert float(jnp.sum((best - target) ** 2)) < 0.1 * float(jnp.sum(target**2))


def test_rssm_mpc_rolls_out_every_seed_on_shared_episodes(trained):
    task = get_task("fork")
    with pytest.raises(PhysgenError, match="elites"):
        MPCConfig(population=4, elites=8)
    config = MPCConfig(horizon=3, population=8, elites=2, iterations=2)
    rollouts = run_episodes(task, MPC.for_task(trained.model, config, task), trained.params, np.arange(2))
    assert rollouts.observations.shape == (2, 2, 101, 6) and rollouts.success.shape == (2, 2)
    assert np.all(np.abs(rollouts.actions) <= 1.0) and np.all(rollouts.lengths >= 1)
    np.testing.assert_array_equal(rollouts.observations[0, :, 0], rollouts.observations[1, :, 0])


def test_lambda_returns_by_hand():
    from physgen.world_models.rssm import lambda_returns

    rewards, values = jnp.array([0.0, 1.0, 2.0, 3.0]), jnp.array([10.0, 20.0, 30.0, 40.0])
    first = jnp.array([True, False, False, False])
    # R2 = 3 + 0.5 (0.5 * 40 + 0.5 * 40) = 23; R1 = 2 + 0.5 (0.5 * 30 + 0.5 * 23) = 15.25; R0 = 1 + 0.5 (10 + 7.625)
    returns, valid = lambda_returns(rewards, jnp.zeros(4), values, first, 0.5, 0.5)
    np.testing.assert_allclose(returns, [9.8125, 15.25, 23.0, 40.0])
    np.testing.assert_array_equal(valid, [1, 1, 1, 0])
    # frame 2 ends the episode and frame 3 starts the next: R1 = 2, R0 = 1 + 0.5 (0.5 * 20 + 0.5 * 2) = 6.5
    returns, valid = lambda_returns(rewards, jnp.array([0.0, 0.0, 1.0, 0.0]), values, first.at[3].set(True), 0.5, 0.5)
    np.testing.assert_allclose(returns[:2], [6.5, 2.0])
    np.testing.assert_array_equal(valid, [1, 1, 0, 0])


def test_mpc_adds_the_discounted_value_of_where_a_plan_ends(trained):
    model, params = trained.model, trained.params_of(0)
    state = jax.tree.map(lambda x: x[-1], model.observe(params, jnp.ones((3, 6)), jnp.zeros((3, 2)),
                                                        jax.random.key(0))[0])
    plans = jax.random.uniform(jax.random.key(1), (5, 4, 2), minval=-1, maxval=1)
    config = MPCConfig(horizon=4, discount=0.9)
    with_value = MPC.for_task(model, config, get_task("fork")).returns(params, state, plans)
    without = MPC.for_task(model, dataclasses.replace(config, terminal_value=False), get_task("fork")).returns(
        params, state, plans)
    for plan, gap in zip(plans, np.asarray(with_value - without)):
        states = model.imagine(params, state, plan)[0]
        last = jax.tree.map(lambda x: x[-1], states)
        expected = 0.9**4 * np.prod(model.continuation(params, states)) * model.value(params, last)
        np.testing.assert_allclose(gap, expected, rtol=1e-4, atol=1e-6)
    assert "value" in trained.metrics and np.isfinite(trained.metrics["value"]).all()


def test_vae_reconstruction_improves_on_a_toy_dataset():
    task = get_task("fork")
    latent = np.random.default_rng(0).normal(size=(512, 2)).astype(np.float32)
    states = np.concatenate([latent, np.sin(latent), 0.5 * latent], axis=1)  # 6-D points on a 2-D manifold
    config = VAEConfig.of(latent=2, hidden=16, beta=0.1, steps=500, batch_size=32, steps_per_call=250,
                       learning_rate=3e-3)
    trained = train_world_models(task, config, states, [0], progress=False)
    model, x = trained.model, trained.model.prepare(states)
    before, after = (float(jnp.mean((model.reconstruct(p, x) - x) ** 2))
                     for p in (model.init(jax.random.key(0)), trained.params_of(0)))
    assert after < 0.2 * before, (before, after)
    assert trained.metrics["recon"][0, -1] < trained.metrics["recon"][0, 0]


def test_image_vae_on_rendered_frames():
    task = get_task("fork")
    frames = render_frames(task, seed=0, episodes=2, size=16)
    assert frames.shape[1:] == (16, 16, 3) and frames.dtype == np.uint8 and len(frames) > 100
    assert len(np.unique(frames.reshape(-1, 3), axis=0)) >= 3  # background, obstacle, goal and agent colours
    config = VAEConfig.of(inputs="image", image_size=16, channels=(8, 16), latent=4, batch_size=8)
    model, params = VAE.abstract(config, 6)
    loss, metrics = jax.eval_shape(model.loss, params, frames[:8], jax.random.key(0))
    assert loss.shape == () and set(metrics) == {"loss", "recon", "kl"}
    assert jax.eval_shape(model.reconstruct, params, frames[:8]).shape == (8, 16, 16, 3)
    with pytest.raises(PhysgenError, match="expects"):
        train_world_models(task, VAEConfig.of(steps=1), frames, [0], progress=False)
    with pytest.raises(PhysgenError, match="divisible"):
        VAEConfig.of(inputs="image", image_size=20)


def test_the_dream_env_ends_episodes_with_the_predicted_probability(trained):
    """A continue head set to say 0.3 everywhere ends 70% of imagined steps (binomial, 4,000 draws)."""
    from physgen.world_models.dream import DreamConfig, Starts, dream_env

    model, params = trained.model, jax.tree.map(jnp.copy, trained.params_of(0))
    head = params["cont"]["out"]
    head["kernel"].value = jnp.zeros_like(head["kernel"].value)
    head["bias"].value = jnp.full_like(head["bias"].value, np.log(0.3 / 0.7) - np.log(model.config.terminal_weight))
    start = model.initial()
    starts = Starts(jax.tree.map(lambda x: x[None], start), model.decode(params, start)[None])
    env = dream_env(model, params, starts, DreamConfig(horizon=100))
    states = jax.vmap(env.reset)(jax.random.split(jax.random.key(0), 4000))[0]
    ended = np.asarray(jax.vmap(lambda s: env.step(s, jnp.zeros(2)).terminated)(states))
    assert abs(ended.mean() - 0.7) < 4 * np.sqrt(0.7 * 0.3 / 4000)


def test_dream_starts_leave_out_terminal_states_and_the_dream_env_resets_to_them(trained):
    from physgen.world_models.dream import DreamConfig, dream_env, dream_starts

    model, params = trained.model, trained.params_of(0)
    n = model.config.sequence_length  # windows span the whole replay: every state of it is in every window
    obs = np.random.default_rng(0).normal(size=(n, 6)).astype(np.float32)
    frames = Frames(jnp.asarray(obs), jnp.ones((n, 2)), jnp.zeros(n), jnp.zeros(n), jnp.zeros(n, bool).at[0].set(True))
    config = DreamConfig(horizon=3, windows=2)

    def distinct(frames):
        starts = dream_starts(model, params, frames, config, jax.random.key(1))
        assert starts.obs.shape == (2 * n, 6)
        return starts, len(np.unique(np.asarray(starts.latents.deter), axis=0))

    assert distinct(frames)[1] > 2
    starts, count = distinct(frames._replace(terminals=jnp.ones(n).at[3].set(0.0)))  # one live frame per window
    assert count <= 2
    env = dream_env(model, params, starts, config)
    state, first_obs = env.reset(jax.random.key(2))
    assert any(np.array_equal(first_obs, o) for o in np.asarray(starts.obs))
    for t in range(1, 4):
        out = env.step(state, jnp.zeros(2))
        state = out.state
        assert out.obs.shape == (6,) and int(state.t) == t and bool(out.truncated) == (t == 3 and not out.terminated)
