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
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from physgen.errors import PhysgenError
from physgen.envs.rollout import step_key
from physgen.policies import ChunkingAgent, Policy, PolicyState, load_policy, stored_weights

SAFE_ACTIONS = ("hold", "zero")


class Controller:
    """Drives a `ChunkingAgent` one call at a time, as `run_episodes` does, with ahead-of-time compiled pieces.

    Call t of an episode (t = 0, 1, ... since `reset(seed)`) observes its observation and returns the agent's
    action for step t: without prefetch, exactly the action `run_episodes` takes at step t of the episode reset
    from `seed` when it sees the same observations. Chunks are sampled every T_a calls with the key of the step
    they start at (`physgen.envs.rollout.step_key`), and ensembled when `ensemble=k` is given (ACT's temporal
    ensembling: see `physgen.policies.agent`).

    With `prefetch=L` (L + T_a <= T_p; default: the config's `delay`), every call t > 0 with t + L a multiple of
    T_a hands the history to a worker thread, which samples a chunk while the caller steps the robot; call t + L
    collects it (waiting only if it is unfinished) and acts from its action for that step on, its first L actions
    having passed while it was sampled: the agent with delay L (`physgen.policies.agent`), whose rollouts
    `physgen sweep-delay` scores. Chunk 0 of an episode is always sampled synchronously by the first call. With
    `rtc` (default: the config's) every chunk is sampled guided towards the one sampled before it (real-time
    chunking), so that the switch between them is smooth. `weights` (default: the config's) stores the weight
    matrices as float32, bfloat16 or int8 (`physgen.policies.quantize`).

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
                 ensemble: float | None = None, prefetch: int | None = None, rtc: bool | None = None,
                 weights: str | None = None, safe_action: str = "hold", seed: int = 0):
        policy, state = stored_weights(policy, state, weights)  # a bad name is refused by the config
        chunking = policy.config.chunking
        prefetch = chunking.delay if prefetch is None else prefetch
        if not (math.isfinite(rate_hz) and rate_hz > 0):
            raise PhysgenError(f"rate_hz must be a positive number of calls per second, got {rate_hz}")
        if safe_action not in SAFE_ACTIONS:
            raise PhysgenError(f"safe_action must be one of {', '.join(SAFE_ACTIONS)}, got {safe_action!r}")
        if ensemble is not None and not math.isfinite(ensemble):
            raise PhysgenError(f"ensemble (the temporal ensembling rate k) must be finite or None, got {ensemble}")
        if not 0 <= prefetch <= chunking.action_steps - chunking.exec_steps:
            raise PhysgenError(f"prefetch must be between 0 and action_steps - exec_steps (T_p - T_a = "
                               f"{chunking.action_steps} - {chunking.exec_steps}), got {prefetch}: a "
                               "prefetched chunk skips its first `prefetch` actions and still needs T_a more")
        if rtc and policy.config.method == "bc":
            raise PhysgenError("rtc guides a sampler, and a bc policy has none: leave rtc off for bc")
        self.agent = agent = ChunkingAgent(policy, steps, ensemble, prefetch, rtc)
        self.exec_steps, self.rate_hz, self.prefetch = chunking.exec_steps, float(rate_hz), int(prefetch)
        self.safe_action, self.obs_shape = safe_action, (policy.obs_dim,)
        self.action_low = np.broadcast_to(np.asarray(state.action_low, np.float32), (policy.act_dim,))
        self.action_high = np.broadcast_to(np.asarray(state.action_high, np.float32), (policy.act_dim,))
        self._zero = np.clip(np.zeros(policy.act_dim, np.float32), self.action_low, self.action_high)
        self._no_chunk = np.zeros((chunking.action_steps, policy.act_dim), np.float32), -chunking.action_steps
        self._period_ns = round(1e9 / self.rate_hz)
        self._seed = seed
        # compiled callers pass the state's leaves: flattening the nested NNX pytree at every call cost ~40 us
        leaves, treedef = jax.tree.flatten(state)
        self._leaves = tuple(leaves)
        obs = jax.ShapeDtypeStruct(self.obs_shape, jnp.float32)
        start = lambda obs: agent.start(state, obs)  # a chunking agent's carry needs the observation only
        carry = jax.eval_shape(start, obs)
        chunk, scalar = jax.ShapeDtypeStruct(carry.chunks.shape[1:], jnp.float32), jax.ShapeDtypeStruct((), jnp.int32)
        self._start = jax.jit(start).lower(obs).compile()
        self._emit = jax.jit(lambda carry, obs: agent.emit(agent.observe(carry, obs))).lower(carry, obs).compile()

        def draw(leaves, carry, obs, newest, newest_start, seed, t):  # the agent's sample, after `newest`
            carry = agent.accept(agent.observe(carry, obs), newest, newest_start)
            return agent.sample(jax.tree.unflatten(treedef, leaves), carry, step_key(seed, t))

        self._sample = jax.jit(draw).lower(self._leaves, carry, obs, chunk, scalar, scalar, scalar).compile()
        take = lambda carry, obs, chunk, start: agent.emit(agent.accept(agent.observe(carry, obs), chunk, start))
        self._take = jax.jit(take).lower(carry, obs, chunk, scalar).compile()

        def decide(leaves, carry, obs, newest, newest_start, seed, t):  # a synchronous sample and its first action
            chunk = draw(leaves, carry, obs, newest, newest_start, seed, t)
            return chunk, *take(carry, obs, chunk, t)

        self._decide = jax.jit(decide).lower(self._leaves, carry, obs, chunk, scalar, scalar, scalar).compile()
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="physgen-prefetch") if self.prefetch else None
        self._pending: deque[tuple[int, Future]] = deque()
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
        while self._pending:
            self._pending.popleft()[1].result()
        if seed is not None:
            self._seed = seed
        self._carry = None  # the agent's, after the last good call
        self._t = 0
        self._newest = self._no_chunk  # (chunk, step sampled at) of the last chunk sampled, which rtc follows
        self._resample = False  # a collected chunk was dropped: sample the next synchronously
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
        for _ in range(max(2 * self.exec_steps, self.exec_steps + self.prefetch) + 1):  # through a collected chunk
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

    def _draw_args(self, t: int) -> tuple:
        newest, newest_start = self._newest
        return newest, np.int32(newest_start), np.int32(self._seed), np.int32(t)

    def _sample_chunk(self, carry, obs: np.ndarray, t: int) -> np.ndarray:
        """The chunk of step `t`, sampled from the history of `carry` with `obs` observed (in the worker thread,
        which samples in order: the chunk before it is the newest)."""
        self._sampled += 1
        chunk = np.asarray(self._sample(self._leaves, carry, obs, *self._draw_args(t)))
        self._newest = chunk, t
        return chunk

    def _step(self, obs: np.ndarray) -> np.ndarray | None:
        """The action of this call, the carry advanced; None, the carry kept, for a non-finite chunk."""
        t, lag = self._t, self.prefetch
        before = carry = self._carry if self._carry is not None else self._start(obs)
        if t == 0 or self._resample or (lag == 0 and t % self.exec_steps == 0):
            self._sampled += 1
            chunk, action, carry = self._decide(self._leaves, carry, obs, *self._draw_args(t))
            chunk = np.asarray(chunk)
            if not np.all(np.isfinite(chunk)):
                self._resample = True
                return None
            self._newest, self._resample = (chunk, t), False
        elif self._pending and self._pending[0][0] + lag == t:
            start, future = self._pending.popleft()
            chunk = future.result()
            if not np.all(np.isfinite(chunk)):
                self._resample = True
                return None
            action, carry = self._take(carry, obs, chunk, np.int32(start))
        else:
            action, carry = self._emit(carry, obs)
        if lag and t > 0 and (t + lag) % self.exec_steps == 0:
            self._pending.append((t, self._worker.submit(self._sample_chunk, before, obs, t)))
        self._carry, self._t = carry, t + 1
        return np.clip(np.asarray(action), self.action_low, self.action_high)  # a finite chunk, a finite action

    def _record(self, start: int) -> None:
        latency = time.perf_counter_ns() - start
        if not self._latencies_ns:
            self._first_ns = start
        self._latencies_ns.append(latency)
        self._misses += latency > self._period_ns
        self._last_ns = start
