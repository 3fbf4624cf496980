"""Real-time chunking (RTC; Black et al. 2025): a new chunk sampled while the previous one still executes is guided to
agree with the previous chunk's remaining actions, by soft-masked inpainting (pseudoinverse guidance, PiGDM).

A chunk sampled from the observation at step t first acts at step t + d (d: the delay). Its actions i < d never act
(their time passes while it is sampled), and the previous chunk's actions for steps t + i, as far as they reach, are
where the two chunks meet. The guide asks action i to match the previous chunk's action for step t + i with weight 1
for i < d, a weight decaying exponentially to 0 over the rest of the overlap, and 0 beyond it, so the new chunk
starts where the old one leaves off and is free where the old one has nothing to say.

At every sampling step, with the current noisy chunk x at flow time tau (0: noise, 1: data) and the network's
estimate x1(x) of the clean chunk, the estimate moves by (1 - tau) c J^T W (Y - x1), with J = dx1/dx, W the weights,
Y the target and c = min(limit, (1 - tau) / (tau r^2)), r^2 = (1 - tau)^2 / (tau^2 + (1 - tau)^2): PiGDM's step,
its weight clipped at `limit` (5, as RTC). A diffusion sampler's step at noise level alpha_bar is the flow step at
the same signal-to-noise ratio (`diffusion_time`), its x scaled accordingly.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

GUIDANCE_LIMIT = 5.0  # RTC's clip on the guidance weight (beta): larger overshoots at the noisiest steps


class Guide(NamedTuple):
    """What a sampler is guided towards: `target` (B, T_p, act_dim) normalized actions, `weights` (B, T_p)."""

    target: jax.Array
    weights: jax.Array


def inpainting_weights(horizon: int, delay, overlap) -> jax.Array:
    """RTC's soft mask (horizon,): 1 for the `delay` actions that never act, decaying as c (e^c - 1) / (e - 1) with
    c falling from 1 towards 0 over the rest of the `overlap` (the previous chunk's remaining actions), 0 beyond."""
    i = jnp.arange(horizon)
    c = (overlap - i) / jnp.maximum(overlap - delay + 1, 1)
    decay = c * jnp.expm1(c) / jnp.expm1(1.0)
    return jnp.where(i < overlap, jnp.where(i < delay, 1.0, decay), 0.0)  # no overlap (no previous chunk): all 0


def guided_estimate(clean: Callable[[jax.Array], jax.Array], x: jax.Array, guide: Guide, tau,
                    scale=1.0) -> jax.Array:
    """The clean-chunk estimate `clean(x)` moved by RTC's guidance at flow time `tau`; `scale` is dx / dx_flow for
    a sampler whose x is scaled unlike the flow's (1 for the flow itself)."""
    tau = jnp.asarray(tau, jnp.float32)
    estimate, pull = jax.vjp(clean, x)
    (gradient,) = pull(guide.weights[..., None] * (guide.target - estimate))
    r2 = (1.0 - tau) ** 2 / (tau**2 + (1.0 - tau) ** 2)
    weight = jnp.minimum(GUIDANCE_LIMIT, (1.0 - tau) / (tau * r2))  # tau = 0: division by zero gives inf, clipped
    return estimate + (1.0 - tau) * weight * scale * gradient


def diffusion_time(alpha_bar) -> tuple[jax.Array, jax.Array]:
    """(tau, scale): the flow time with the signal-to-noise ratio of a diffusion step at `alpha_bar`, and the scale
    dx_diffusion / dx_flow between the two samplers' noisy chunks there (x_diffusion = scale * x_flow)."""
    signal, noise = jnp.sqrt(alpha_bar), jnp.sqrt(1.0 - alpha_bar)
    return signal / (signal + noise), signal + noise
