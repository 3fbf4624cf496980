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
from physgen.policies import Policy, PolicyState, flat_sampler, load_policy

SAFE_ACTIONS = ("hold", "zero")


class Controller:
    """Receding-horizon control with an ahead-of-time compiled sampler.

    Call t of an episode (t = 0, 1, ... since `reset`) appends its observation to the history of the last T_o
    observations (the episode's first observation fills it). Chunk k (k = 0, 1, ...) is sampled with the key
    `fold_in(key(seed), k)` from the history of call s_k and supplies the actions of calls k*T_a to
    k*T_a + T_a - 1, action index t - s_k: the queue executes exactly T_a actions per chunk.

    - Without prefetch, s_k = k*T_a: call k*T_a samples chunk k itself, while the caller waits.
    - With `prefetch=L` (L + T_a <= T_p), call k*T_a - L hands the history to a worker thread, which samples
      chunk k (s_k = k*T_a - L) while the caller steps the robot; call k*T_a collects it (waiting only if it is
      unfinished) and skips its first L actions, whose time passed while it was sampled. Chunk 0 of an episode
      is always sampled synchronously by the first call.
    - With `ensemble=k` (ACT's temporal ensembling), every chunk still covering call t contributes its action
      for t, weighted exp(-k * i), i = 0 for the oldest; otherwise the newest chunk alone acts.

    A bad observation (not an array of numbers, a shape other than (obs_dim,), NaN, Inf or beyond float32), or
    a chunk with a non-finite action from the policy, gives the safe action: "hold" repeats the last action
    returned, "zero" returns zero clipped into the bounds (which "hold" also returns before the first action).
    The call sets `fault` to the reason and does not advance the plan: the next good observation resumes it,
    sampling afresh (with the next chunk's key) where the non-finite chunk was dropped. Every action lies inside
    the bounds, and `act` never raises: whatever goes wrong inside it is a fault too.

    Latency is measured from entry to return of every `act`; a call slower than 1 / `rate_hz` misses its
    deadline. `stats()` covers every call since construction (the warm-up excluded), across episodes.
    """

    def __init__(self, policy: Policy, state: PolicyState, rate_hz: float = 50.0, steps: int | None = None,
                 ensemble: float | None = None, prefetch: int = 0, safe_action: str = "hold", seed: int = 0):
        config = policy.config
        self.obs_steps, self.action_steps = config.obs_steps, config.action_steps
        self.exec_steps = config.exec_steps
        if not (math.isfinite(rate_hz) and rate_hz > 0):
            raise PhysgenError(f"rate_hz must be a positive number of calls per second, got {rate_hz}")
        if safe_action not in SAFE_ACTIONS:
            raise PhysgenError(f"safe_action must be one of {', '.join(SAFE_ACTIONS)}, got {safe_action!r}")
        if ensemble is not None and not math.isfinite(ensemble):
            raise PhysgenError(f"ensemble (the temporal ensembling rate k) must be finite or None, got {ensemble}")
        if not 0 <= prefetch <= self.action_steps - self.exec_steps:
            raise PhysgenError(f"prefetch must be between 0 and action_steps - exec_steps (T_p - T_a = "
                               f"{self.action_steps} - {self.exec_steps}), got {prefetch}: a prefetched chunk "
                               "skips its first `prefetch` actions and still needs T_a more")
        self.rate_hz, self.ensemble, self.prefetch = float(rate_hz), ensemble, int(prefetch)
        self.safe_action, self.obs_shape = safe_action, (policy.obs_dim,)
        self.action_low = np.broadcast_to(np.asarray(state.action_low, np.float32), (policy.act_dim,))
        self.action_high = np.broadcast_to(np.asarray(state.action_high, np.float32), (policy.act_dim,))
        self._zero = np.clip(np.zeros(policy.act_dim, np.float32), self.action_low, self.action_high)
        self._period_ns = round(1e9 / self.rate_hz)
        self._seed = seed
        self._leaves, sample = flat_sampler(policy, state, steps)
        history = jax.ShapeDtypeStruct((self.obs_steps, policy.obs_dim), jnp.float32)
        chunk_sampler = jax.jit(lambda leaves, history, key, chunk: sample(leaves, history,
                                                                           jax.random.fold_in(key, chunk)))
        self._sample = chunk_sampler.lower(self._leaves, history, jax.random.key(seed),
                                           jax.ShapeDtypeStruct((), jnp.int32)).compile()
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
        """Start an episode: empty history and queue, chunk keys from k = 0; `seed` replaces the seed."""
        if self._pending is not None:
            self._pending[1].result()
        self._pending = None
        if seed is not None:
            self._seed = seed
        self._key = jax.random.key(self._seed)
        self._history: deque[np.ndarray] = deque(maxlen=self.obs_steps)
        self._chunks: list[tuple[int, np.ndarray]] = []  # (s_k, chunk), oldest first
        self._t = self._chunk = 0
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

    def _next_chunk(self) -> int:
        """The index k of the chunk about to be sampled (its key is fold_in(key(seed), k))."""
        self._chunk, self._sampled = self._chunk + 1, self._sampled + 1
        return self._chunk - 1

    def _sample_chunk(self, history: np.ndarray, chunk: int) -> np.ndarray:
        return np.asarray(self._sample(self._leaves, history, self._key, np.int32(chunk)))

    def _step(self, obs: np.ndarray) -> np.ndarray | None:
        """Advance the plan by one call and return its action; None, without advancing, for a non-finite chunk."""
        self._history.extend([obs] * (self.obs_steps if not self._history else 1))
        t = self._t
        if t % self.exec_steps == 0:
            if self._pending is not None:
                (start, future), self._pending = self._pending, None
                chunk = future.result()
            else:
                start, chunk = t, self._sample_chunk(np.stack(self._history), self._next_chunk())
            if not np.all(np.isfinite(chunk)):
                return None  # dropped before the plan moves: the next call, at the same t, samples another
            self._chunks = [*self._chunks, (start, chunk)] if self.ensemble is not None else [(start, chunk)]
        if self.prefetch and (t + self.prefetch) % self.exec_steps == 0:
            history = np.stack(self._history)
            self._pending = t, self._worker.submit(self._sample_chunk, history, self._next_chunk())
        if self.ensemble is None:
            start, chunk = self._chunks[-1]
            action = chunk[t - start]
        else:
            self._chunks = [(start, chunk) for start, chunk in self._chunks if t - start < self.action_steps]
            weights = np.exp(-self.ensemble * np.arange(len(self._chunks)))
            actions = np.stack([chunk[t - start] for start, chunk in self._chunks])
            action = (weights @ actions / weights.sum()).astype(np.float32)
        self._t += 1
        return np.clip(action, self.action_low, self.action_high)  # a finite chunk gives a finite action

    def _record(self, start: int) -> None:
        latency = time.perf_counter_ns() - start
        if not self._latencies_ns:
            self._first_ns = start
        self._latencies_ns.append(latency)
        self._misses += latency > self._period_ns
        self._last_ns = start
