"""Conditional flow matching for action chunks: independent or minibatch optimal-transport coupling, ODE integrators.

Noise x0 ~ N(0, I) flows to data x1 along straight lines x_t = (1 - t) x0 + t x1 with velocity x1 - x0. OT-CFM
(Tong et al.) re-pairs each minibatch by an entropic optimal-transport plan between noise and data, computed on the
device by log-domain Sinkhorn iterations; each noise sample's data partner is drawn from its row of the plan.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from physgen.policies.diffusion import unroll_for

COUPLINGS = ("independent", "ot")
INTEGRATORS = ("euler", "midpoint")


def sinkhorn_log_plan(x0: jax.Array, x1: jax.Array, epsilon: float = 0.05, iterations: int = 100) -> jax.Array:
    """Log of the entropic OT plan between two equal-size batches (uniform weights) for squared Euclidean cost.

    The cost is divided by its maximum, so `epsilon` is relative to the largest squared distance in the batch.
    """
    a, b = x0.reshape(x0.shape[0], -1), x1.reshape(x1.shape[0], -1)
    cost = jnp.sum((a[:, None, :] - b[None, :, :]) ** 2, axis=-1)
    cost = cost / jnp.maximum(cost.max(), 1e-12)
    n = cost.shape[0]
    log_weight = -jnp.log(n)

    def update(_, potentials):
        f, g = potentials
        f = epsilon * (log_weight - jax.nn.logsumexp((g[None, :] - cost) / epsilon, axis=1))
        g = epsilon * (log_weight - jax.nn.logsumexp((f[:, None] - cost) / epsilon, axis=0))
        return f, g

    f, g = jax.lax.fori_loop(0, iterations, update, (jnp.zeros(n), jnp.zeros(n)))
    return (f[:, None] + g[None, :] - cost) / epsilon


def ot_pairs(key: jax.Array, x0: jax.Array, x1: jax.Array, epsilon: float, iterations: int):
    """Indices (i, j): every x0[i] once, its partner x1[j] drawn from row i of the OT plan."""
    log_plan = sinkhorn_log_plan(x0, x1, epsilon, iterations)
    return jnp.arange(x0.shape[0]), jax.random.categorical(key, log_plan, axis=1)


def flow_matching_loss(velocity: Callable, x1: jax.Array, cond: jax.Array, key: jax.Array, coupling: str = "ot",
                       epsilon: float = 0.05, iterations: int = 100) -> jax.Array:
    """Mean squared error between the predicted and the straight-line velocity x1 - x0 at a uniform random time."""
    k_noise, k_pairs, k_t = jax.random.split(key, 3)
    x0 = jax.random.normal(k_noise, x1.shape)
    if coupling == "ot":
        i, j = ot_pairs(k_pairs, x0, x1, epsilon, iterations)
        x0, x1, cond = x0[i], x1[j], cond[j]
    t = jax.random.uniform(k_t, (x1.shape[0],))
    tb = t.reshape(-1, *([1] * (x1.ndim - 1)))
    xt = (1.0 - tb) * x0 + tb * x1
    return jnp.mean((velocity(xt, t, cond) - (x1 - x0)) ** 2)


def integrate(velocity: Callable, x: jax.Array, cond: jax.Array, steps: int, method: str = "euler") -> jax.Array:
    """Integrate dx/dt = velocity(x, t, cond) from t = 0 to 1 in `steps` equal steps (one `lax.scan`)."""
    dt = 1.0 / steps
    batch = x.shape[0]

    def one_step(x, i):
        t = jnp.full((batch,), i * dt)
        if method == "midpoint":
            half = x + 0.5 * dt * velocity(x, t, cond)
            return x + dt * velocity(half, t + 0.5 * dt, cond), None
        return x + dt * velocity(x, t, cond), None

    x, _ = jax.lax.scan(one_step, x, jnp.arange(steps), unroll=unroll_for(steps))
    return x
