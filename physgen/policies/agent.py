"""A chunking policy as an agent (`physgen.envs.rollout.Agent`): receding horizon, T_a executed actions per chunk.

The carry holds the last T_o observations (the first one repeated, as the training windows pad), the chunks still
covering the current step with the steps they started at, and the step count. Every T_a steps the agent samples a
chunk with that step's key. With `ensemble=k` (ACT's temporal ensembling) every chunk still covering step t
contributes its action for t, weighted exp(-k * i), i = 0 for the oldest; otherwise the newest chunk alone acts.

With a delay d (a sampler slower than the control period, as on a robot) a chunk sampled from the observation at
step t first acts at step t + d, with its action for that step (its first d actions are never executed): chunks
are sampled at the steps t with t + d a multiple of T_a, and the episode's first chunk at step 0 acts at once (the
robot waits for it). Until a chunk arrives the chunks before it act. With `rtc` (real-time chunking,
`physgen.policies.guidance`) each chunk is sampled guided towards the newest chunk before it.

`act` is made of three pieces, `observe`, `sample` and `accept`/`emit`, which the real-time `Controller` calls
separately to sample in a worker thread: the bench's rollouts and the controller act identically.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from physgen.policies.guidance import Guide, inpainting_weights
from physgen.policies.policy import Policy, PolicyState, act


class ChunkCarry(NamedTuple):
    history: jax.Array  # (T_o, obs_dim), oldest first
    chunks: jax.Array  # (slots, T_p, act_dim) raw actions, oldest first
    starts: jax.Array  # (slots,) the step each chunk's first action belongs to
    t: jax.Array  # steps taken in this episode


class ChunkingAgent(NamedTuple):
    """Acts with a `Policy` whose parameters are a `PolicyState`; `steps`, `ensemble`, `delay` and `rtc` override its
    config's sampler steps, temporal ensembling rate, delay and real-time chunking."""

    policy: Policy
    steps: int | None = None
    ensemble: float | None = None
    delay: int | None = None
    rtc: bool | None = None

    @property
    def rate(self) -> float | None:
        """The temporal ensembling rate k in use (None: the newest chunk alone acts)."""
        return self.ensemble if self.ensemble is not None else self.policy.config.chunking.ensemble

    @property
    def lag(self) -> int:
        """The delay d in use: control steps between a chunk's observation and its first executed action."""
        return self.delay if self.delay is not None else self.policy.config.chunking.delay

    @property
    def guided(self) -> bool:
        return self.rtc if self.rtc is not None else self.policy.config.chunking.rtc

    @property
    def slots(self) -> int:
        """Chunks kept: those that can still cover a step (the newest alone without ensembling), and those sampled
        but not yet arrived."""
        chunking = self.policy.config.chunking
        acting = 1 if self.rate is None else math.ceil((chunking.action_steps - self.lag) / chunking.exec_steps)
        return acting + math.ceil(self.lag / chunking.exec_steps)

    def start(self, state: PolicyState, obs: jax.Array) -> ChunkCarry:
        config, slots = self.policy.config, self.slots
        return ChunkCarry(jnp.repeat(obs[None], config.chunking.obs_steps, axis=0),
                          jnp.zeros((slots, config.chunking.action_steps, self.policy.act_dim)),
                          jnp.full(slots, -config.chunking.action_steps, jnp.int32), jnp.zeros((), jnp.int32))

    def act(self, state: PolicyState, carry: ChunkCarry, obs: jax.Array, key: jax.Array):
        carry = self.observe(carry, obs)
        sampled = lambda: self.accept(carry, self.sample(state, carry, key), carry.t)
        period = self.policy.config.chunking.exec_steps
        if period > 1:  # vmapped, a cond computes both branches: at T_a = 1, where every step samples, it is left out
            due = (carry.t + self.lag) % period == 0
            carry = jax.lax.cond(due | (carry.t == 0) if self.lag else due, sampled, lambda: carry)
        else:
            carry = sampled()
        return self.emit(carry)

    def observe(self, carry: ChunkCarry, obs: jax.Array) -> ChunkCarry:
        return carry._replace(history=jnp.concatenate([carry.history[1:], obs[None]]))

    def sample(self, state: PolicyState, carry: ChunkCarry, key: jax.Array) -> jax.Array:
        """A raw chunk (T_p, act_dim) for step `carry.t` from the carry's raw history; with real-time chunking,
        guided towards the carry's newest chunk where it reaches."""
        guide = None
        if self.guided:
            horizon = self.policy.config.chunking.action_steps
            offset = carry.t - carry.starts[-1]  # the newest chunk's index for step t
            target = carry.chunks[-1, jnp.clip(offset + jnp.arange(horizon), 0, horizon - 1)]
            guide = Guide(target[None], inpainting_weights(horizon, self.lag, horizon - offset)[None])
        return act(self.policy, state, carry.history[None], key, self.steps, guide)[0]

    def accept(self, carry: ChunkCarry, chunk: jax.Array, start) -> ChunkCarry:
        """The carry with `chunk`, sampled at step `start`, as the newest."""
        return carry._replace(chunks=jnp.concatenate([carry.chunks[1:], chunk[None]]),
                              starts=jnp.concatenate([carry.starts[1:], jnp.asarray(start, jnp.int32)[None]]))

    def emit(self, carry: ChunkCarry) -> tuple[jax.Array, ChunkCarry]:
        """The action of step t and the carry of step t + 1: from the chunks that have arrived and still cover t."""
        length = self.policy.config.chunking.action_steps
        offsets = carry.t - carry.starts
        live = ((offsets >= self.lag) | (carry.starts == 0)) & (offsets < length)
        actions = carry.chunks[jnp.arange(self.slots), jnp.clip(offsets, 0, length - 1)]
        if self.rate is None:
            action = actions[self.slots - 1 - jnp.argmax(live[::-1])]  # the newest live chunk's
        else:
            weights = jnp.where(live, jnp.exp(-self.rate * (jnp.cumsum(live) - 1)), 0.0)
            action = weights @ actions / weights.sum()
        return action, carry._replace(t=carry.t + 1)
