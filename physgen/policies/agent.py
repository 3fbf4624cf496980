"""A chunking policy as an agent (`physgen.envs.rollout.Agent`): receding horizon, T_a executed actions per chunk.

The carry holds the last T_o observations (the first one repeated, as the training windows pad), the chunks still
covering the current step with the steps they started at, and the step count. Every T_a steps the agent samples a
chunk with that step's key. With `ensemble=k` (ACT's temporal ensembling) every chunk still covering step t
contributes its action for t, weighted exp(-k * i), i = 0 for the oldest; otherwise the newest chunk alone acts.

`act` is made of three pieces, `observe`, `sample` and `accept`/`emit`, which the real-time `Controller` calls
separately to sample in a worker thread: the bench's rollouts and the controller act identically.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from physgen.policies.policy import Policy, PolicyState, act


class ChunkCarry(NamedTuple):
    history: jax.Array  # (T_o, obs_dim), oldest first
    chunks: jax.Array  # (slots, T_p, act_dim) raw actions, oldest first
    starts: jax.Array  # (slots,) the step each chunk's first action belongs to
    t: jax.Array  # steps taken in this episode


class ChunkingAgent(NamedTuple):
    """Acts with a `Policy` whose parameters are a `PolicyState`; `steps` and `ensemble` override its config's
    sampler steps and temporal ensembling rate."""

    policy: Policy
    steps: int | None = None
    ensemble: float | None = None

    @property
    def rate(self) -> float | None:
        """The temporal ensembling rate k in use (None: the newest chunk alone acts)."""
        return self.ensemble if self.ensemble is not None else self.policy.config.chunking.ensemble

    @property
    def slots(self) -> int:
        """Chunks kept: the newest alone, or every one that can still cover a step when ensembling."""
        config = self.policy.config
        return 1 if self.rate is None else math.ceil(config.chunking.action_steps / config.chunking.exec_steps)

    def start(self, state: PolicyState, obs: jax.Array) -> ChunkCarry:
        config, slots = self.policy.config, self.slots
        return ChunkCarry(jnp.repeat(obs[None], config.chunking.obs_steps, axis=0),
                          jnp.zeros((slots, config.chunking.action_steps, self.policy.act_dim)),
                          jnp.full(slots, -config.chunking.action_steps, jnp.int32), jnp.zeros((), jnp.int32))

    def act(self, state: PolicyState, carry: ChunkCarry, obs: jax.Array, key: jax.Array):
        carry = self.observe(carry, obs)
        sampled = lambda: self.accept(carry, self.sample(state, carry.history, key), carry.t)
        period = self.policy.config.chunking.exec_steps
        if period > 1:  # vmapped, a cond computes both branches: at T_a = 1, where every step samples, it is left out
            carry = jax.lax.cond(carry.t % period == 0, sampled, lambda: carry)
        else:
            carry = sampled()
        return self.emit(carry)

    def observe(self, carry: ChunkCarry, obs: jax.Array) -> ChunkCarry:
        return carry._replace(history=jnp.concatenate([carry.history[1:], obs[None]]))

    def sample(self, state: PolicyState, history: jax.Array, key: jax.Array) -> jax.Array:
        """A raw chunk (T_p, act_dim) for a raw history (T_o, obs_dim)."""
        return act(self.policy, state, history[None], key, self.steps)[0]

    def accept(self, carry: ChunkCarry, chunk: jax.Array, start) -> ChunkCarry:
        """The carry with `chunk`, whose first action belongs to step `start`, as the newest."""
        return carry._replace(chunks=jnp.concatenate([carry.chunks[1:], chunk[None]]),
                              starts=jnp.concatenate([carry.starts[1:], jnp.asarray(start, jnp.int32)[None]]))

    def emit(self, carry: ChunkCarry) -> tuple[jax.Array, ChunkCarry]:
        """The action of step t and the carry of step t + 1."""
        offsets = carry.t - carry.starts
        if self.rate is None:
            action = carry.chunks[-1, offsets[-1]]
        else:
            length = self.policy.config.chunking.action_steps
            live = offsets < length
            weights = jnp.where(live, jnp.exp(-self.rate * (jnp.cumsum(live) - 1)), 0.0)
            actions = carry.chunks[jnp.arange(self.slots), jnp.clip(offsets, 0, length - 1)]
            action = weights @ actions / weights.sum()
        return action, carry._replace(t=carry.t + 1)
