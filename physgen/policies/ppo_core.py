"""PPO's pure parts: the actor-critic network, running statistics, GAE, the clipped losses and one update.

Everything here is a pure function of pytrees for one seed; `physgen.policies.ppo` vmaps it over seeds and drives
the environments.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from physgen.data import Normalizer

LOG_2PI = math.log(2 * math.pi)
STATS_EPS = 1e-8


class ActorCritic(nnx.Module):
    """Separate tanh MLPs for the Gaussian mean and the value, and a state-independent log-std (CleanRL's choice)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...], rngs: nnx.Rngs):
        self.actor = _mlp(obs_dim, hidden, act_dim, 0.01, rngs)
        self.critic = _mlp(obs_dim, hidden, 1, 1.0, rngs)
        self.log_std = nnx.Param(jnp.zeros(act_dim))

    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(mean, log_std, value) of normalised observations."""
        return _forward(self.actor, obs), self.log_std[...], _forward(self.critic, obs)[..., 0]


def _mlp(in_dim: int, hidden: tuple[int, ...], out_dim: int, out_scale: float, rngs: nnx.Rngs) -> nnx.List:
    sizes = (in_dim, *hidden, out_dim)
    scales = [math.sqrt(2)] * len(hidden) + [out_scale]
    return nnx.List([nnx.Linear(a, b, kernel_init=orthogonal(s), rngs=rngs)
                     for a, b, s in zip(sizes[:-1], sizes[1:], scales)])


def orthogonal(scale: float):
    """Orthogonal kernel initializer (Saxe et al.): the Q of a Gaussian matrix, drawn from the same Haar
    distribution as `nnx.initializers.orthogonal`, but by Gram-Schmidt in plain jnp. The LAPACK QR that flax calls
    deadlocks XLA:CPU's thread pool now and then when it is vmapped over seeds: each batched QR blocks a pool thread
    waiting for work queued behind it on the same pool."""
    def init(key, shape, dtype=jnp.float32):
        rows, cols = shape
        tall = jax.random.normal(key, (max(rows, cols), min(rows, cols)), jnp.float32)
        q = _orthonormal_columns(tall)
        return (scale * (q if rows >= cols else q.T)).astype(dtype)
    return init


@jax.jit
def _orthonormal_columns(a: jax.Array) -> jax.Array:
    """Gram-Schmidt with one re-orthogonalisation pass ("twice is enough"): the Q of a = QR with diag(R) > 0."""
    columns = jnp.arange(a.shape[1])

    def one_column(j, q):
        earlier = q * (columns < j)
        v = q[:, j]
        for _ in range(2):
            v = v - earlier @ (earlier.T @ v)
        return q.at[:, j].set(v / jnp.linalg.norm(v))
    return jax.lax.fori_loop(0, a.shape[1], one_column, a)


def _forward(layers: nnx.List, x: jax.Array) -> jax.Array:
    for layer in layers[:-1]:
        x = jnp.tanh(layer(x))
    return layers[-1](x)


def gaussian_log_prob(action: jax.Array, mean: jax.Array, log_std: jax.Array) -> jax.Array:
    z = (action - mean) * jnp.exp(-log_std)
    return jnp.sum(-0.5 * z**2 - log_std - 0.5 * LOG_2PI, axis=-1)


def gaussian_entropy(log_std: jax.Array) -> jax.Array:
    return jnp.sum(log_std + 0.5 * (LOG_2PI + 1.0), axis=-1)


class RunningStats(NamedTuple):
    """Running mean and variance over a stream of batches (Chan et al.), as in Gymnasium's normalisation wrappers."""

    mean: jax.Array
    var: jax.Array
    count: jax.Array

    @classmethod
    def create(cls, shape: tuple[int, ...] = ()) -> "RunningStats":
        return cls(jnp.zeros(shape), jnp.ones(shape), jnp.asarray(1e-4))

    def update(self, batch: jax.Array) -> "RunningStats":
        """Fold in `batch` (leading axis = samples)."""
        n = batch.shape[0]
        delta = batch.mean(0) - self.mean
        total = self.count + n
        m2 = self.var * self.count + batch.var(0) * n + delta**2 * self.count * n / total
        return RunningStats(self.mean + delta * n / total, m2 / total, total)

    def normalizer(self) -> Normalizer:
        return Normalizer(self.mean, jnp.sqrt(self.var + STATS_EPS))


def normalize_obs(normalizer: Normalizer, obs: jax.Array, clip: float) -> jax.Array:
    return jnp.clip(normalizer.normalize(obs), -clip, clip)


def gae(rewards, values, next_values, terminations, dones, gamma: float, lam: float):
    """Generalised advantage estimation over time-major arrays (T, ...); returns (advantages, returns).

    `next_values[t]` is the value of the observation after step t: the episode's final observation when it ended
    there. A termination cuts the bootstrap (`terminations`); any end of episode (`dones`, truncation included)
    cuts the advantage recursion, so a truncated episode is bootstrapped from its final observation.
    """
    deltas = rewards + gamma * next_values * (1.0 - terminations) - values

    def backward(next_advantage, step):
        delta, done = step
        advantage = delta + gamma * lam * (1.0 - done) * next_advantage
        return advantage, advantage

    _, advantages = jax.lax.scan(backward, jnp.zeros_like(values[0]), (deltas, dones.astype(values.dtype)),
                                 reverse=True)
    return advantages, advantages + values


def clipped_surrogate(ratio: jax.Array, advantage: jax.Array, clip: float) -> jax.Array:
    """PPO's per-sample objective (to maximise): min(r A, clip(r, 1 - eps, 1 + eps) A)."""
    return jnp.minimum(ratio * advantage, jnp.clip(ratio, 1.0 - clip, 1.0 + clip) * advantage)


def clipped_value_loss(value, old_value, target, clip: float) -> jax.Array:
    """Per-sample 0.5 max((v - R)^2, (v_old + clip(v - v_old, -eps, eps) - R)^2)."""
    clipped = old_value + jnp.clip(value - old_value, -clip, clip)
    return 0.5 * jnp.maximum((value - target) ** 2, (clipped - target) ** 2)


class Transition(NamedTuple):
    """One environment step of a rollout (per env): what the update needs."""

    obs: jax.Array  # normalised with the statistics of the moment it was seen
    action: jax.Array  # the unclipped Gaussian sample
    log_prob: jax.Array
    value: jax.Array
    reward: jax.Array  # raw
    terminated: jax.Array
    done: jax.Array  # terminated or truncated
    next_obs: jax.Array  # raw observation after the step (the final one when the episode ended)


class Batch(NamedTuple):
    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array
    value: jax.Array
    advantage: jax.Array
    target: jax.Array


class Learner(NamedTuple):
    """Everything that changes during training, for one seed."""

    params: nnx.State
    opt_state: optax.OptState
    obs_stats: RunningStats
    return_stats: RunningStats
    discounted_return: jax.Array  # (envs,), for reward scaling
    key: jax.Array


def make_optimizer(config, num_updates: int) -> optax.GradientTransformation:
    steps = num_updates * config.epochs * config.minibatches
    lr = optax.linear_schedule(config.lr, 0.0, steps) if config.anneal_lr else config.lr
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), optax.adam(lr, eps=1e-5))


def act(graphdef, params, obs_stats: RunningStats, key, raw_obs: jax.Array, config):
    """Fold `raw_obs` (envs, obs_dim) into the statistics and sample actions.

    Returns (obs_stats, key, normalised obs, action, log_prob, value); takes only what acting needs, so that a
    jitted call per environment step moves few arrays.
    """
    key, sample_key = jax.random.split(key)
    obs_stats = obs_stats.update(raw_obs) if config.normalize_obs else obs_stats
    obs = normalize_obs(obs_stats.normalizer(), raw_obs, config.obs_clip)
    mean, log_std, value = nnx.merge(graphdef, params)(obs)
    action = mean + jnp.exp(log_std) * jax.random.normal(sample_key, mean.shape)
    return obs_stats, key, obs, action, gaussian_log_prob(action, mean, log_std), value


def scale_rewards(learner: Learner, rewards, dones, config):
    """Divide rewards (T, envs) by the running std of the discounted return, clipped (Gymnasium's NormalizeReward)."""

    def one_step(carry, step):
        stats, discounted = carry
        reward, done = step
        discounted = config.gamma * discounted + reward
        stats = stats.update(discounted)
        scaled = jnp.clip(reward / jnp.sqrt(stats.var + STATS_EPS), -config.reward_clip, config.reward_clip)
        return (stats, jnp.where(done, 0.0, discounted)), scaled

    (stats, discounted), scaled = jax.lax.scan(
        one_step, (learner.return_stats, learner.discounted_return), (rewards, dones))
    return learner._replace(return_stats=stats, discounted_return=discounted), scaled


def ppo_loss(params, graphdef, batch: Batch, config):
    mean, log_std, value = nnx.merge(graphdef, params)(batch.obs)
    ratio = jnp.exp(gaussian_log_prob(batch.action, mean, log_std) - batch.log_prob)
    advantage = (batch.advantage - batch.advantage.mean()) / (batch.advantage.std() + 1e-8)
    policy_loss = -clipped_surrogate(ratio, advantage, config.clip).mean()
    if config.clip_value_loss:
        value_loss = clipped_value_loss(value, batch.value, batch.target, config.clip).mean()
    else:
        value_loss = 0.5 * ((value - batch.target) ** 2).mean()
    entropy = gaussian_entropy(log_std)
    loss = policy_loss + config.value_coef * value_loss - config.entropy_coef * entropy
    return loss, {"policy_loss": policy_loss, "value_loss": value_loss, "entropy": entropy,
                  "clip_fraction": jnp.mean(jnp.abs(ratio - 1.0) > config.clip)}


def update(graphdef, optimizer, learner: Learner, rollout: Transition, config):
    """One PPO update from a time-major rollout (T, envs): reward scaling, GAE, `epochs` x `minibatches` steps."""
    if config.normalize_reward:
        learner, rewards = scale_rewards(learner, rollout.reward, rollout.done, config)
    else:
        rewards = rollout.reward
    model = nnx.merge(graphdef, learner.params)
    next_obs = normalize_obs(learner.obs_stats.normalizer(), rollout.next_obs, config.obs_clip)
    next_values = model(next_obs)[2]
    advantages, targets = gae(rewards, rollout.value, next_values, rollout.terminated.astype(jnp.float32),
                              rollout.done, config.gamma, config.gae_lambda)
    flat = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), Batch(
        rollout.obs, rollout.action, rollout.log_prob, rollout.value, advantages, targets))
    size = flat.obs.shape[0]

    def minibatch_step(carry, batch):
        params, opt_state = carry
        grads, metrics = jax.grad(ppo_loss, has_aux=True)(params, graphdef, batch, config)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), metrics

    def epoch(carry, key):
        order = jax.random.permutation(key, size)
        batches = jax.tree.map(lambda x: x[order].reshape(config.minibatches, -1, *x.shape[1:]), flat)
        return jax.lax.scan(minibatch_step, carry, batches)

    key, epoch_key = jax.random.split(learner.key)
    (params, opt_state), metrics = jax.lax.scan(
        epoch, (learner.params, learner.opt_state), jax.random.split(epoch_key, config.epochs))
    learner = learner._replace(params=params, opt_state=opt_state, key=key)
    return learner, jax.tree.map(jnp.mean, metrics)
