"""Latency as a metric: compile time, time per sampled chunk and per action, and the control rate a policy sustains."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from physgen.control.controller import Controller
from physgen.envs.rollout import Agent
from physgen.policies import Policy, PolicyRunner, PolicyState


def _timed(call, calls: int) -> tuple[float, float]:
    """p50 and p99 (microseconds) of `call(i)` for i in range(calls)."""
    nanoseconds = []
    for i in range(calls):
        begin = time.perf_counter_ns()
        call(i)
        nanoseconds.append(time.perf_counter_ns() - begin)
    p50, p99 = np.percentile(np.asarray(nanoseconds) / 1e3, [50, 99])
    return float(p50), float(p99)


def measure_latency(policy: Policy, state: PolicyState, observations: np.ndarray, rate_hz: float,
                    steps: int | None = None, calls: int = 200) -> dict:
    """Time one policy on `observations` (consecutive states, numpy): the sampler alone (one chunk per call) and the
    `Controller` at `rate_hz` (one action per call, a new chunk every T_a calls, no prefetch).

    `sustainable_hz` is the highest rate at which 99% of the controller's calls finish within their period.
    """
    start = time.perf_counter()
    runner = PolicyRunner(policy, state, steps)
    compile_s = time.perf_counter() - start
    history = np.repeat(observations[:1], policy.config.chunking.obs_steps, axis=0)
    chunk_p50, chunk_p99 = _timed(lambda call: runner.act(history, call), calls)
    with Controller(policy, state, rate_hz=rate_hz, steps=steps, prefetch=0) as controller:
        controller.reset()
        for call in range(calls):
            controller.act(observations[call % len(observations)])
        actions = controller.stats()
    return {"compile_s": compile_s, "chunk_p50_us": chunk_p50, "chunk_p99_us": chunk_p99,
            "action_p50_us": actions["p50_us"], "action_p99_us": actions["p99_us"],
            "sustainable_hz": 1e6 / actions["p99_us"], "calls": calls, "steps": steps or policy.config.inference_steps}


def measure_agent_latency(agent: Agent, params, observations: np.ndarray, calls: int = 200) -> dict:
    """Time one seed's agent acting on consecutive `observations` (numpy; PPO's policy, an MPC planner), one jitted
    `act` per call with the carry kept as in an episode: the first call (compilation) and `calls` more. Every call
    computes an action, so the chunk and action figures are the same."""
    step, key = jax.jit(agent.act), jax.random.key(0)
    state = {"carry": agent.start(params, jnp.asarray(observations[0]))}

    def act(obs: np.ndarray) -> np.ndarray:
        action, state["carry"] = step(params, state["carry"], jnp.asarray(obs), key)
        return np.asarray(action)

    start = time.perf_counter()
    act(observations[0])
    compile_s = time.perf_counter() - start
    p50, p99 = _timed(lambda call: act(observations[call % len(observations)]), calls)
    return {"compile_s": compile_s, "chunk_p50_us": p50, "chunk_p99_us": p99, "action_p50_us": p50,
            "action_p99_us": p99, "sustainable_hz": 1e6 / p99, "calls": calls, "steps": None}
