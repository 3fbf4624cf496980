"""Denoising diffusion (DDPM) for action chunks: noise schedules, the training loss, DDPM and DDIM samplers.

`denoise(x, t, cond)` is any network taking t in [0, 1) (the step index over the number of training steps). The number
of sampling steps is chosen at sampling time, any value up to the training steps, with the same trained network:
timesteps are spaced as `diffusers` does ("leading": t = i * T // S). Predicted clean samples are clipped to [-1, 1]
(actions are min-max normalized), and the noise is re-derived from the clipped sample, so that a DDIM step with
eta = 1 is exactly the DDPM posterior step.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from physgen.policies.guidance import Guide, diffusion_time, guided_estimate

SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("epsilon", "sample")


class NoiseSchedule(NamedTuple):
    betas: jax.Array  # (T,)
    alphas_cumprod: jax.Array  # (T,)


def make_schedule(kind: str, steps: int) -> NoiseSchedule:
    """`linear`: betas from 1e-4 to 0.02 (DDPM); `cosine`: squaredcos_cap_v2 (improved DDPM), betas capped at 0.999."""
    if kind == "linear":
        betas = jnp.linspace(1e-4, 0.02, steps)
    elif kind == "cosine":
        def alpha_bar(s):
            return jnp.cos((s + 0.008) / 1.008 * jnp.pi / 2) ** 2

        grid = jnp.arange(steps + 1) / steps
        betas = jnp.minimum(1.0 - alpha_bar(grid[1:]) / alpha_bar(grid[:-1]), 0.999)
    else:
        raise ValueError(f"unknown noise schedule {kind!r}; choose one of {SCHEDULES}")
    return NoiseSchedule(betas.astype(jnp.float32), jnp.cumprod(1.0 - betas).astype(jnp.float32))


def diffusion_loss(denoise: Callable, schedule: NoiseSchedule, prediction: str, x0: jax.Array, cond: jax.Array,
                   key: jax.Array) -> jax.Array:
    """Mean squared error of the predicted noise (`epsilon`) or clean chunk (`sample`) at a uniform random step."""
    k_t, k_noise = jax.random.split(key)
    steps = schedule.betas.shape[0]
    t = jax.random.randint(k_t, (x0.shape[0],), 0, steps)
    noise = jax.random.normal(k_noise, x0.shape)
    ab = schedule.alphas_cumprod[t].reshape(-1, *([1] * (x0.ndim - 1)))
    xt = jnp.sqrt(ab) * x0 + jnp.sqrt(1.0 - ab) * noise
    target = noise if prediction == "epsilon" else x0
    return jnp.mean((denoise(xt, t / steps, cond) - target) ** 2)


def sampling_timesteps(train_steps: int, steps: int) -> tuple[jax.Array, jax.Array]:
    """The `steps` timesteps visited, from noisiest to cleanest, and the step each one moves to (-1: clean)."""
    if not 1 <= steps <= train_steps:
        raise ValueError(f"sampling steps must be between 1 and the {train_steps} training steps, got {steps}")
    t = (jnp.arange(steps) * (train_steps // steps))[::-1]
    return t, t - train_steps // steps


def _clean(schedule, prediction, output, x, t):
    """The clean chunk x0 the network's output predicts at x_t (unclipped)."""
    ab = schedule.alphas_cumprod[t]
    return (x - jnp.sqrt(1.0 - ab) * output) / jnp.sqrt(ab) if prediction == "epsilon" else output


def _alpha_bar_prev(schedule, t_prev):
    return jnp.where(t_prev >= 0, schedule.alphas_cumprod[jnp.maximum(t_prev, 0)], 1.0)


def ddpm_posterior(schedule: NoiseSchedule, x0, x, t, t_prev):
    """Mean and variance of q(x_{t_prev} | x_t, x0) (the DDPM reverse step, strided when t_prev < t - 1)."""
    ab, ab_prev = schedule.alphas_cumprod[t], _alpha_bar_prev(schedule, t_prev)
    alpha, beta = ab / ab_prev, 1.0 - ab / ab_prev
    mean = (jnp.sqrt(ab_prev) * beta / (1.0 - ab)) * x0 + (jnp.sqrt(alpha) * (1.0 - ab_prev) / (1.0 - ab)) * x
    return mean, (1.0 - ab_prev) / (1.0 - ab) * beta


def ddim_step(schedule: NoiseSchedule, x0, eps, t, t_prev, eta: float, noise):
    """One DDIM update (Song et al.): eta = 0 is deterministic, eta = 1 samples the DDPM posterior."""
    ab, ab_prev = schedule.alphas_cumprod[t], _alpha_bar_prev(schedule, t_prev)
    sigma = eta * jnp.sqrt((1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev))
    return jnp.sqrt(ab_prev) * x0 + jnp.sqrt(1.0 - ab_prev - sigma**2) * eps + sigma * noise


def step_contexts(net: Callable, times: jax.Array, cond: jax.Array, batch: int) -> tuple[Any, Callable]:
    """(contexts, apply): the network's context for every sampling time in `times` (leading axis), computed in one
    batched pass before the sampling loop, and `apply(x, context)`, the rest of the network. A plain `f(x, t, cond)`
    has no context to share: its contexts are the times."""
    steps = times.shape[0]
    if not hasattr(net, "context"):
        return jnp.repeat(times[:, None], batch, axis=1), lambda x, t: net(x, t, cond)
    # one flat batch of steps x rows (not a vmap over steps), so that each step's slice is contiguous
    flat = net.context(jnp.repeat(times, batch), jnp.tile(cond, (steps,) + (1,) * (cond.ndim - 1)))
    return jax.tree.map(lambda a: a.reshape(steps, batch, *a.shape[1:]), flat), net.apply


def unroll_for(steps: int) -> int:
    """Sampler loops of up to 16 steps are unrolled: on XLA:CPU this saves ~30% of a 10-step MLP sampler's time
    (loop overhead per step); longer loops stay rolled to keep compile time and program size small."""
    return steps if steps <= 16 else 1


def sample(denoise: Callable, schedule: NoiseSchedule, prediction: str, cond: jax.Array, key: jax.Array,
           shape: tuple[int, ...], steps: int, sampler: str = "ddim", eta: float = 0.0,
           guide: Guide | None = None) -> jax.Array:
    """Draw x0 of `shape` by `steps` reverse steps of the DDPM or DDIM sampler from `key`: x_T and each step's noise
    are drawn from it, then `sample_from_noise` runs the steps."""
    k_init, k_steps = jax.random.split(key)
    deterministic = sampler == "ddim" and eta == 0.0  # no noise to draw for sigma = 0 (eta is a Python float)
    step_noise = None if deterministic else jax.vmap(lambda k: jax.random.normal(k, shape))(
        jax.random.split(k_steps, steps))
    return sample_from_noise(denoise, schedule, prediction, cond, jax.random.normal(k_init, shape), step_noise,
                             steps, sampler, eta, guide)


def sample_from_noise(denoise: Callable, schedule: NoiseSchedule, prediction: str, cond: jax.Array,
                      initial_noise: jax.Array, step_noise: jax.Array | None, steps: int, sampler: str = "ddim",
                      eta: float = 0.0, guide: Guide | None = None) -> jax.Array:
    """x0 by `steps` reverse steps from x_T = `initial_noise`, with `step_noise` (steps, *shape) the standard normal
    draws the steps add (None: DDIM at eta 0, which adds none, so x_T alone decides the sample; distillation and
    the ONNX export rely on that). One `lax.scan`, jittable; the network's context for every step is computed
    before it, in one batched pass. `guide`: real-time chunking's guidance of every step's clean estimate
    (`physgen.policies.guidance`), the noise re-derived from the guided estimate."""
    train_steps = schedule.betas.shape[0]
    timesteps, previous = sampling_timesteps(train_steps, steps)
    contexts, apply = step_contexts(denoise, timesteps / train_steps, cond, initial_noise.shape[0])
    if step_noise is None:
        step_noise = jnp.zeros((steps, *initial_noise.shape))

    def reverse_step(x, inputs):
        t, t_prev, noise, context = inputs
        if guide is None:
            x0 = _clean(schedule, prediction, apply(x, context), x, t)
        else:  # guided before the clip, whose gradient vanishes where the noisy early estimates lie beyond it
            clean = lambda x: _clean(schedule, prediction, apply(x, context), x, t)
            x0 = guided_estimate(clean, x, guide, *diffusion_time(schedule.alphas_cumprod[t]))
        x0 = jnp.clip(x0, -1.0, 1.0)
        ab = schedule.alphas_cumprod[t]
        eps = (x - jnp.sqrt(ab) * x0) / jnp.sqrt(1.0 - ab)  # the noise consistent with x_t and x0
        if sampler == "ddpm":
            mean, var = ddpm_posterior(schedule, x0, x, t, t_prev)
            return mean + jnp.sqrt(var) * noise, None
        return ddim_step(schedule, x0, eps, t, t_prev, eta, noise), None

    x, _ = jax.lax.scan(reverse_step, initial_noise, (timesteps, previous, step_noise, contexts),
                        unroll=unroll_for(steps))
    return x
