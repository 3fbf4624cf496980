import jax
import jax.numpy as jnp
import numpy as np
import pytest

from physgen.policies import diffusion


def test_linear_schedule_matches_closed_form():
    schedule = diffusion.make_schedule("linear", 1000)
    betas = np.linspace(1e-4, 0.02, 1000)
    np.testing.assert_allclose(schedule.betas, betas, rtol=1e-6)
    np.testing.assert_allclose(schedule.alphas_cumprod, np.cumprod(1 - betas), rtol=1e-5)


def test_cosine_schedule_matches_closed_form_alpha_bar():
    steps, s = 100, 0.008
    schedule = diffusion.make_schedule("cosine", steps)
    f = lambda t: np.cos((t / steps + s) / (1 + s) * np.pi / 2) ** 2  # noqa: E731
    t = np.arange(steps - 1)  # the last beta is capped at 0.999
    np.testing.assert_allclose(schedule.alphas_cumprod[:-1], f(t + 1) / f(0), rtol=1e-4)
    assert float(schedule.betas[-1]) == pytest.approx(0.999)


def test_sampling_timesteps_follow_leading_spacing():
    t, prev = diffusion.sampling_timesteps(100, 10)
    np.testing.assert_array_equal(t, [90, 80, 70, 60, 50, 40, 30, 20, 10, 0])
    np.testing.assert_array_equal(prev, t - 10)
    with pytest.raises(ValueError, match="between 1 and the 100 training steps"):
        diffusion.sampling_timesteps(100, 101)


@pytest.mark.parametrize("t, t_prev", [(99, 98), (50, 40), (7, -1)])
def test_ddim_with_eta_1_is_the_ddpm_posterior(t, t_prev):
    schedule = diffusion.make_schedule("cosine", 100)
    k1, k2 = jax.random.split(jax.random.key(0))
    x0, x = jax.random.uniform(k1, (4, 3), minval=-1, maxval=1), jax.random.normal(k2, (4, 3))
    ab = schedule.alphas_cumprod[t]
    eps = (x - jnp.sqrt(ab) * x0) / jnp.sqrt(1 - ab)
    mean, var = diffusion.ddpm_posterior(schedule, x0, x, t, t_prev)
    # Algebraically identical; float32 rounding differs by up to ~5e-5 at t = 99, where alpha_bar is ~1e-6.
    np.testing.assert_allclose(diffusion.ddim_step(schedule, x0, eps, t, t_prev, 1.0, jnp.zeros_like(x)), mean,
                               rtol=1e-4, atol=1e-6)
    unit = jnp.ones_like(x)
    spread = diffusion.ddim_step(schedule, x0, eps, t, t_prev, 1.0, unit) - mean
    np.testing.assert_allclose(spread**2, var * unit, rtol=1e-4, atol=1e-7)


def _oracle(schedule, target, prediction):
    """The exact denoiser of a data distribution concentrated on `target`."""
    steps = schedule.betas.shape[0]

    def denoise(x, t, cond):
        ab = schedule.alphas_cumprod[jnp.round(t * steps).astype(int)][:, None, None]
        return (x - jnp.sqrt(ab) * target) / jnp.sqrt(1 - ab) if prediction == "epsilon" else jnp.broadcast_to(target, x.shape)

    return denoise


@pytest.mark.parametrize("sampler, steps", [("ddim", 1), ("ddim", 10), ("ddim", 100), ("ddpm", 10), ("ddpm", 100)])
@pytest.mark.parametrize("prediction", ["epsilon", "sample"])
def test_samplers_return_the_data_point_under_an_exact_denoiser(sampler, steps, prediction):
    schedule = diffusion.make_schedule("cosine", 100)
    target = jnp.array([[0.3, -0.5], [0.9, 0.1]])
    x = diffusion.sample(_oracle(schedule, target, prediction), schedule, prediction, jnp.zeros((5, 1)),
                         jax.random.key(1), (5, 2, 2), steps, sampler)
    np.testing.assert_allclose(x, jnp.broadcast_to(target, (5, 2, 2)), atol=1e-4)


def test_loss_is_zero_for_the_exact_denoiser_and_positive_otherwise():
    schedule = diffusion.make_schedule("linear", 100)
    target = jnp.array([[0.3, -0.5]])
    x0 = jnp.broadcast_to(target, (64, 1, 2))
    loss = diffusion.diffusion_loss(_oracle(schedule, target, "epsilon"), schedule, "epsilon", x0, None,
                                    jax.random.key(0))
    assert float(loss) < 1e-8
    zero = diffusion.diffusion_loss(lambda x, t, c: jnp.zeros_like(x), schedule, "epsilon", x0, None, jax.random.key(0))
    assert float(zero) == pytest.approx(1.0, abs=0.15)  # E[eps^2] = 1
