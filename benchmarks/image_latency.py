"""Latency of an image policy's `act` (numpy in, numpy out, after warm-up) beside the same policy on state vectors.

For flow (10 Euler steps), DDIM (10 steps) and BC with each task's recipe (physgen's default MLP and image encoder):
`PolicyRunner.act` on `fork-image` frames (32x32 RGB, T_o 1: the encoder runs once per call, before the sampler) and
on `fork` state vectors (T_o 2), timed alternately in the same run; the ratio of their medians and p99s is about the
encoder's cost. "encoder alone" is the encoder on one history, in one compiled call on device arrays. Weights are
freshly initialized: latency does not depend on training. Writes the rows to a JSON file for the docs.

    python benchmarks/image_latency.py [--calls 300] [--out docs/results/latency-images.json]

Run with `jax_cpu_enable_async_dispatch` off (a control loop waits for every action: see
`benchmarks/sampler_latency.py --inline-dispatch`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax

jax.config.update("jax_cpu_enable_async_dispatch", False)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from physgen.bench.protocol import machine  # noqa: E402
from physgen.data import Normalizer  # noqa: E402
from physgen.envs import get_task  # noqa: E402
from physgen.policies.policy import Policy, PolicyConfig, PolicyState, observation_normalizer  # noqa: E402
from physgen.policies.runner import PolicyRunner  # noqa: E402

CASES = (("flow, Euler 10", "flow", 10), ("DDIM 10", "diffusion", 10), ("BC", "bc", 1))


def runner(task_name: str, method: str, steps: int) -> tuple[PolicyRunner, np.ndarray]:
    """A runner of a fresh policy on the task (its recipe's image size, if any) and 64 observations of it."""
    task = get_task(task_name)
    config = PolicyConfig.of(method=method, **task.recipe.policy)
    policy, params = Policy.create(config, task.obs_dim, task.act_dim, jax.random.key(0))
    reset = jax.vmap(task.functional.reset)(jax.random.split(jax.random.key(1), 64))[1]
    state = PolicyState(params, observation_normalizer(config, reset), Normalizer(jnp.zeros(2), jnp.ones(2)),
                        jnp.asarray(task.action_space.low), jnp.asarray(task.action_space.high))
    return PolicyRunner(policy, state, steps), np.asarray(reset, np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--out", default="docs/results/latency-images.json")
    args = parser.parse_args()
    rows = []
    print(f"{'policy':<16} {'input':<22} {'p50 us':>8} {'p95 us':>8} {'p99 us':>8}   image/state p50, p99")
    for name, method, steps in CASES:
        pair = {kind: runner(task, method, steps) for kind, task in (("state", "fork"), ("image", "fork-image"))}
        seconds = {kind: [] for kind in pair}
        for i in range(args.calls + 10):  # alternating, so that both see the same machine
            for kind, (run, observations) in pair.items():
                history = observations[(i + np.arange(run.obs_shape[0])) % 64]
                start = time.perf_counter()
                run.act(history, i)
                if i >= 10:
                    seconds[kind].append(time.perf_counter() - start)
        stats = {kind: np.percentile(np.asarray(s) * 1e6, [50, 95, 99]) for kind, s in seconds.items()}
        for kind in ("state", "image"):
            steps_seen = pair[kind][0].obs_shape[0]
            label = f"{steps_seen} x 32x32 RGB frame" if kind == "image" else f"{steps_seen} x 6-d state"
            ratio = (f"   {stats['image'][0] / stats['state'][0]:.2f}x, {stats['image'][2] / stats['state'][2]:.2f}x"
                     if kind == "image" else "")
            print(f"{name:<16} {label:<22} {stats[kind][0]:8.0f} {stats[kind][1]:8.0f} {stats[kind][2]:8.0f}{ratio}")
            rows.append({"policy": name, "input": label, "p50_us": stats[kind][0], "p95_us": stats[kind][1],
                         "p99_us": stats[kind][2]})
    image_runner, frames = runner("fork-image", "bc", 1)
    policy, params = image_runner.policy, image_runner.state.params
    encode = jax.jit(lambda params, history: policy.conditioning(params, history)[1])
    history = jnp.asarray(frames[None, : image_runner.obs_shape[0]] / 127.5 - 1.0)
    encode(params, history).block_until_ready()
    encoder = []
    for _ in range(args.calls):
        start = time.perf_counter()
        encode(params, history).block_until_ready()
        encoder.append(time.perf_counter() - start)
    p = np.percentile(np.asarray(encoder) * 1e6, [50, 95, 99])
    label = f"{image_runner.obs_shape[0]} x 32x32 RGB frame"
    print(f"{'encoder alone':<16} {label:<22} {p[0]:8.0f} {p[1]:8.0f} {p[2]:8.0f}")
    rows.append({"policy": "encoder alone", "input": label, "p50_us": p[0], "p95_us": p[1], "p99_us": p[2]})
    result = {"calls": args.calls, "machine": machine(),
              "jax": jax.__version__, "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
