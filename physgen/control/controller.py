"""A chunking policy inside a real-time loop: one observation in, one bounded action out, at a fixed rate.

    with Controller.from_checkpoint("runs/hopper/flow/seed_0", rate_hz=50, prefetch=1) as controller:
        controller.reset()
        while running:
            action = controller.act(obs)   # never raises on a bad observation: see `fault`
        print(controller.stats())
"""

from __future__ import annotations

import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from physgen.errors import PhysgenError
from physgen.envs.rollout import step_key
from physgen.policies import ChunkingAgent, Policy, PolicyState, flat_sampler, load_policy

SAFE_ACTIONS = ("hold", "zero")


class Controller:
    """Drives a `ChunkingAgent` one call at a time, as `run_episodes` does, with ahead-of-time compiled pieces.

    Call t of an episode (t = 0, 1, ... since `reset(seed)`) observes its observation and returns the agent's
    action for step t: without prefetch, exactly the action `run_episodes` takes at step t of the episode reset
    from `seed` when it sees the same observations. Chunks are sampled every T_a calls with the key of the step
    they start at (`physgen.envs.rollout.step_key`), and ensembled when `ensemble=k` is given (ACT's temporal
    ensembling: see `physgen.policies.agent`).

    With `prefetch=L` (L + T_a <= T_p), call k*T_a - L hands the history to a worker thread, which samples the
    chunk of step k*T_a while the caller steps the robot; call k*T_a collects it (waiting only if it is
    unfinished) and skips its first L actions, whose time passed while it was sampled. Chunk 0 of an episode is
    always sampled synchronously by the first call.

    A bad observation (not an array of numbers, a shape other than (obs_dim,), NaN, Inf or beyond float32), or
    a chunk with a non-finite action from the policy, gives the safe action: "hold" repeats the last action
    returned, "zero" returns zero clipped into the bounds (which "hold" also returns before the first action).
    The call sets `fault` to the reason and leaves the agent's carry as it was: the next good observation is
    taken in its place, and a dropped chunk is sampled again on it. Every action lies inside the bounds, and `act`
    never raises: whatever goes wrong inside it is a fault too.

    Latency is measured from entry to return of every `act`; a call slower than 1 / `rate_hz` misses its
    deadline. `stats()` covers every call since construction (the warm-up excluded), across episodes.
    """

    def __init__(self, policy: Policy, state: PolicyState, rate_hz: float = 50.0, steps: int | None = None,
                 ensemble: float | None = None, prefetch: int = 0, safe_action: str = "hold", seed: int = 0):
        config = policy.config
        if not (math.isfinite(rate_hz) and rate_hz > 0):
            raise PhysgenError(f"rate_hz must be a positive number of calls per second, got {rate_hz}")
        if safe_action not in SAFE_ACTIONS:
            raise PhysgenError(f"safe_action must be one of {', '.join(SAFE_ACTIONS)}, got {safe_action!r}")
        if ensemble is not None and not math.isfinite(ensemble):
            raise PhysgenError(f"ensemble (the temporal ensembling rate k) must be finite or None, got {ensemble}")
        if not 0 <= prefetch <= config.chunking.action_steps - config.chunking.exec_steps:
            raise PhysgenError(f"prefetch must be between 0 and action_steps - exec_steps (T_p - T_a = "
                               f"{config.chunking.action_steps} - {config.chunking.exec_steps}), got {prefetch}: a "
                               "prefetched chunk skips its first `prefetch` actions and still needs T_a more")
        self.agent = agent = ChunkingAgent(policy, steps, ensemble)
        self.exec_steps, self.rate_hz, self.prefetch = config.chunking.exec_steps, float(rate_hz), int(prefetch)
        self.safe_action, self.obs_shape = safe_action, (policy.obs_dim,)
        self.action_low = np.broadcast_to(np.asarray(state.action_low, np.float32), (policy.act_dim,))
        self.action_high = np.broadcast_to(np.asarray(state.action_high, np.float32), (policy.act_dim,))
        self._zero = np.clip(np.zeros(policy.act_dim, np.float32), self.action_low, self.action_high)
        self._period_ns = round(1e9 / self.rate_hz)
        self._seed = seed
        self._leaves, sample = flat_sampler(policy, state, steps)  # the agent's sample, on the state's leaves
        obs = jax.ShapeDtypeStruct(self.obs_shape, jnp.float32)
        start = lambda obs: agent.start(state, obs)  # a chunking agent's carry needs the observation only
        carry = jax.eval_shape(start, obs)
        chunk, scalar = jax.ShapeDtypeStruct(carry.chunks.shape[1:], jnp.float32), jax.ShapeDtypeStruct((), jnp.int32)
        self._start = jax.jit(start).lower(obs).compile()
        self._emit = jax.jit(lambda carry, obs: agent.emit(agent.observe(carry, obs))).lower(carry, obs).compile()
        draw = lambda leaves, carry, obs, seed, t: sample(leaves, agent.observe(carry, obs).history, step_key(seed, t))
        self._sample = jax.jit(draw).lower(self._leaves, carry, obs, scalar, scalar).compile()
        take = lambda carry, obs, chunk, start: agent.emit(agent.accept(agent.observe(carry, obs), chunk, start))
        self._take = jax.jit(take).lower(carry, obs, chunk, scalar).compile()

        def decide(leaves, carry, obs, seed, t):  # a synchronous sample and its first action in one call
            chunk = draw(leaves, carry, obs, seed, t)
            return chunk, *take(carry, obs, chunk, t)

        self._decide = jax.jit(decide).lower(self._leaves, carry, obs, scalar, scalar).compile()
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="physgen-prefetch") if self.prefetch else None
        self._pending: tuple[int, Future] | None = None
        self._clear_stats()
        self._warm_up(np.broadcast_to(np.asarray(state.obs_norm.shift, np.float32), self.obs_shape))

    @classmethod
    def from_checkpoint(cls, path: str | Path, rate_hz: float = 50.0, task: str | None = None,
                        **options) -> Controller:
        """A controller for the EMA policy of a `physgen train` checkpoint; `options` as the constructor's."""
        policy, state, _ = load_policy(path, task)
        return cls(policy, state, rate_hz, **options)

    @property
    def flagged(self) -> bool:
        """Whether the last `act` returned the safe action (`fault` says why)."""
        return self.fault is not None

    def reset(self, seed: int | None = None) -> None:
        """Start an episode: an empty carry, steps from t = 0; `seed` (the episode's seed) replaces the seed."""
        if self._pending is not None:
            self._pending[1].result()
        self._pending = None
        if seed is not None:
            self._seed = seed
        self._carry = None  # the agent's, after the last good call
        self._t = 0
        self._last: np.ndarray | None = None
        self.fault: str | None = None

    def act(self, obs) -> np.ndarray:
        """The action (act_dim,) float32 for the observation (obs_dim,) of this control period."""
        start = time.perf_counter_ns()
        obs, fault = self._check(obs)
        action = None
        if fault is None:
            try:
                action = self._step(obs)
                if action is None:
                    fault = "the policy produced a non-finite chunk: dropped, the next call samples another"
            except Exception as error:  # a failed worker or a closed controller: the loop still gets an action
                fault = f"the controller failed ({type(error).__name__}: {error})"
        if action is None:
            action = self._zero if self.safe_action == "zero" or self._last is None else self._last
            self._flagged += 1
        self._last, self.fault = action, fault
        self._record(start)
        return action.copy()

    def stats(self) -> dict:
        """Latency percentiles and maximum (microseconds), calls, deadline misses, achieved call rate (Hz),
        flagged calls and sampled chunks."""
        latencies = np.asarray(self._latencies_ns, np.float64) / 1e3
        p50, p95, p99, top = np.percentile(latencies, [50, 95, 99, 100]) if latencies.size else [math.nan] * 4
        calls, span_s = len(latencies), (self._last_ns - self._first_ns) / 1e9
        return {"p50_us": float(p50), "p95_us": float(p95), "p99_us": float(p99), "max_us": float(top),
                "calls": calls, "misses": self._misses,
                "achieved_hz": (calls - 1) / span_s if calls > 1 and span_s > 0 else math.nan,
                "flagged": self._flagged, "chunks": self._sampled}

    def close(self) -> None:
        """Stop the prefetch worker (a controller with prefetch cannot act afterwards)."""
        if self._worker is not None:
            self._worker.shutdown(wait=True, cancel_futures=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _warm_up(self, obs: np.ndarray) -> None:
        """Run every path of `act` (synchronous and prefetched samples, the queue) once, then reset."""
        self.reset()
        for _ in range(2 * self.exec_steps + 1):
            self.act(obs)
        self.reset()
        self._clear_stats()

    def _clear_stats(self) -> None:
        self._latencies_ns: list[int] = []
        self._first_ns = self._last_ns = self._misses = self._flagged = self._sampled = 0

    def _check(self, obs) -> tuple[np.ndarray | None, str | None]:
        try:
            with np.errstate(all="ignore"):
                array = np.asarray(obs)
                if array.dtype.kind not in "biufO":  # strings ("1.5" would convert), complex, dates, ...
                    raise TypeError(array.dtype)
                obs = array.astype(np.float32)  # objects: float() of each, which may raise anything
        except Exception as error:  # 10**400 (OverflowError), ragged lists, a foreign __array__ or __float__
            return None, f"the observation is not numeric ({type(obs).__name__}; {type(error).__name__})"
        if obs.shape != self.obs_shape:
            return None, f"the observation has shape {obs.shape}, the policy expects {self.obs_shape}"
        if not np.all(np.isfinite(obs)):
            return None, "the observation holds NaN or Inf (or a value beyond float32)"
        return obs, None

    def _decide_now(self, carry, obs: np.ndarray, t: int):
        """(chunk, action, carry) of a synchronous decision at step `t`."""
        self._sampled += 1
        chunk, action, carry = self._decide(self._leaves, carry, obs, np.int32(self._seed), np.int32(t))
        return np.asarray(chunk), action, carry

    def _sample_chunk(self, carry, obs: np.ndarray, t: int) -> np.ndarray:
        """The chunk of step `t`, sampled from the history of `carry` with `obs` observed."""
        self._sampled += 1
        return np.asarray(self._sample(self._leaves, carry, obs, np.int32(self._seed), np.int32(t)))

    def _step(self, obs: np.ndarray) -> np.ndarray | None:
        """The action of this call, the carry advanced; None, the carry kept, for a non-finite chunk."""
        t = self._t
        before = carry = self._carry if self._carry is not None else self._start(obs)
        if t % self.exec_steps == 0:
            if self._pending is None:
                chunk, action, carry = self._decide_now(carry, obs, t)
            else:
                (start, future), self._pending = self._pending, None
                chunk = future.result()
                if np.all(np.isfinite(chunk)):
                    action, carry = self._take(carry, obs, chunk, np.int32(start))
            if not np.all(np.isfinite(chunk)):
                return None
        else:
            action, carry = self._emit(carry, obs)
        if self.prefetch and (t + self.prefetch) % self.exec_steps == 0:
            self._pending = t, self._worker.submit(self._sample_chunk, before, obs, t + self.prefetch)
        self._carry, self._t = carry, t + 1
        return np.clip(np.asarray(action), self.action_low, self.action_high)  # a finite chunk, a finite action

    def _record(self, start: int) -> None:
        latency = time.perf_counter_ns() - start
        if not self._latencies_ns:
            self._first_ns = start
        self._latencies_ns.append(latency)
        self._misses += latency > self._period_ns
        self._last_ns = start
