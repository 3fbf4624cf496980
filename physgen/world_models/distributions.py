"""Latent distributions of the world models: symlog, Gaussian and categorical (uniform-mix) latents, closed-form KL
divergences, and DreamerV3's KL balancing with free nats.

A distribution is a NamedTuple (a pytree, so it passes through `lax.scan`); leading axes are batch or time, the
last one (Gaussian) or two (categorical: variables x classes) are the latent. Samples are flat vectors.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


def symlog(x):
    """sign(x) log(1 + |x|): squashes large magnitudes, identity near zero (DreamerV3)."""
    return jnp.sign(x) * jnp.log1p(jnp.abs(x))


def symexp(x):
    """The inverse of `symlog`."""
    return jnp.sign(x) * jnp.expm1(jnp.abs(x))


class Gaussian(NamedTuple):
    mean: jax.Array  # (..., dim)
    std: jax.Array  # (..., dim)


class Categorical(NamedTuple):
    log_probs: jax.Array  # (..., variables, classes), normalized


Latent = Gaussian | Categorical


def gaussian(params: jax.Array, min_std: float) -> Gaussian:
    """A diagonal Gaussian from the concatenated (mean, raw std) output of a layer; std = softplus(raw) + min_std."""
    mean, raw = jnp.split(params, 2, axis=-1)
    return Gaussian(mean, jax.nn.softplus(raw) + min_std)


def categorical(logits: jax.Array, unimix: float) -> Categorical:
    """Independent categoricals mixed with `unimix` of the uniform distribution, so no class has probability 0."""
    probs = jax.nn.softmax(logits, axis=-1)
    probs = (1.0 - unimix) * probs + unimix / logits.shape[-1]
    return Categorical(jnp.log(probs))


def sample(dist: Latent, key: jax.Array) -> jax.Array:
    """A reparameterized sample (Gaussian) or a one-hot sample with straight-through gradients (categorical)."""
    if isinstance(dist, Gaussian):
        return dist.mean + dist.std * jax.random.normal(key, dist.mean.shape)
    probs = jnp.exp(dist.log_probs)
    classes = probs.shape[-1]
    onehot = jax.nn.one_hot(jax.random.categorical(key, dist.log_probs), classes, dtype=probs.dtype)
    return flatten(onehot + probs - jax.lax.stop_gradient(probs))


def mode(dist: Latent) -> jax.Array:
    """The most likely latent (flat): the mean, or each variable's most likely class, one-hot."""
    if isinstance(dist, Gaussian):
        return dist.mean
    return flatten(jax.nn.one_hot(jnp.argmax(dist.log_probs, -1), dist.log_probs.shape[-1]))


def flatten(x: jax.Array) -> jax.Array:
    return x.reshape(*x.shape[:-2], -1)


def kl(p: Latent, q: Latent) -> jax.Array:
    """KL(p || q) in nats, summed over the latent: shape (...)."""
    if isinstance(p, Gaussian):
        ratio = (p.std / q.std) ** 2
        return 0.5 * jnp.sum(ratio + ((p.mean - q.mean) / q.std) ** 2 - 1.0 - jnp.log(ratio), axis=-1)
    return jnp.sum(jnp.exp(p.log_probs) * (p.log_probs - q.log_probs), axis=(-2, -1))


def kl_balance(post: Latent, prior: Latent, dyn_scale: float, rep_scale: float, free_nats: float):
    """DreamerV3's KL loss, per step and averaged:
    `dyn_scale * max(free, KL(sg(post) || prior)) + rep_scale * max(free, KL(post || sg(prior)))`.
    The dynamics term trains the prior towards the posterior, the representation term (smaller) the posterior
    towards the prior; below `free_nats` a term gives no gradient. Returns (loss, (dyn, rep) raw KLs)."""
    stop = jax.lax.stop_gradient
    dyn = kl(stop(post), prior)
    rep = kl(post, stop(prior))
    loss = dyn_scale * jnp.maximum(dyn, free_nats) + rep_scale * jnp.maximum(rep, free_nats)
    return loss.mean(), (dyn.mean(), rep.mean())
