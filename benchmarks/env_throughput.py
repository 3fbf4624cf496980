"""Environment throughput and dataset loading, on this machine.

Prints env-steps/s of `fork` stepped by `jax.vmap` + `lax.scan` (target: >= 1,000,000/s on 2 CPU cores), beside its
Gymnasium wrapper and Gymnasium's `Hopper-v5` (one environment, random actions); then the load time and peak memory
of a 1,000,000-transition `fork` dataset (target: < 10 s and < 1 GiB), both from the Minari files alone (first load)
and from the array cache that `physgen data` writes. Medians over repeats, with the spread.

    python benchmarks/env_throughput.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import jax
import numpy as np

from physgen.envs import get_task

TRANSITIONS = 1_000_000


def summarize(rates: list[float]) -> str:
    return f"median {np.median(rates):>12,.0f}  (min {min(rates):,.0f}, max {max(rates):,.0f}, n={len(rates)})"


def vmapped_steps_per_second(task_name: str, envs: int, steps: int, repeats: int) -> list[float]:
    fns = get_task(task_name).functional

    @jax.jit
    def run(key):
        states, _ = jax.vmap(fns.reset)(jax.random.split(key, envs))

        def one_step(states, step_key):
            actions = jax.random.uniform(step_key, (envs, 2), minval=-1.0, maxval=1.0)
            out = jax.vmap(fns.step)(states, actions)
            return out.state, out.reward.sum()

        _, rewards = jax.lax.scan(one_step, states, jax.random.split(key, steps))
        return rewards.sum()

    jax.block_until_ready(run(jax.random.key(0)))  # compile
    rates = []
    for i in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run(jax.random.key(i + 1)))
        rates.append(envs * steps / (time.perf_counter() - start))
    return rates


def gym_steps_per_second(make, steps: int, repeats: int) -> list[float]:
    env = make()
    env.action_space.seed(0)
    env.reset(seed=0)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                env.reset()
        rates.append(steps / (time.perf_counter() - start))
    return rates


LOAD_SNIPPET = """
import json, resource, time
from physgen.data import load_dataset
from physgen.envs import get_task
task = get_task("fork")
start = time.perf_counter()
data = load_dataset(task).trajectories
data.observations.block_until_ready()
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "steps": data.num_steps, "peak_mib": peak / 1024}))
"""


def load_in_fresh_process(root: Path) -> dict:
    env = {**os.environ, "MINARI_DATASETS_PATH": str(root)}
    out = subprocess.run([sys.executable, "-c", LOAD_SNIPPET], env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-dataset", action="store_true")
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPU cores")

    print("\nenv-steps/s")
    for envs in (1024, 4096, 16384):
        rates = vmapped_steps_per_second("fork", envs, 100, args.repeats)
        print(f"  fork    jax.vmap x{envs:<6} lax.scan 100 steps  {summarize(rates)}")
    rates = vmapped_steps_per_second("maze", 4096, 100, args.repeats)
    print(f"  maze    jax.vmap x4096   lax.scan 100 steps  {summarize(rates)}")
    rates = gym_steps_per_second(lambda: gym.make("physgen/Fork-v0"), 2000, args.repeats)
    print(f"  fork    Gymnasium wrapper (1 env)            {summarize(rates)}")
    rates = gym_steps_per_second(lambda: gym.make("Hopper-v5"), 5000, args.repeats)
    print(f"  hopper  Gymnasium Hopper-v5 (1 env)          {summarize(rates)}")

    if args.skip_dataset:
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "datasets"
        from physgen.data import generate_dataset
        from physgen.data.trajectories import CACHE_NAME

        os.environ["MINARI_DATASETS_PATH"] = str(root)
        episodes = TRANSITIONS // 59 + 1  # the fork expert's episodes are 59 steps long on average
        start = time.perf_counter()
        path = generate_dataset(get_task("fork"), episodes=episodes, seed=0)
        print(f"\ndataset: {episodes} fork episodes written in {time.perf_counter() - start:.1f} s")
        cached = [load_in_fresh_process(root) for _ in range(args.repeats)]
        (path / CACHE_NAME).unlink()
        first = load_in_fresh_process(root)  # reads every episode through Minari, then writes the cache
        steps = cached[0]["steps"]
        print(f"load {steps:,} transitions, each in a fresh process:")
        seconds = [c["seconds"] for c in cached]
        print(f"  from the array cache   median {np.median(seconds):.2f} s (max {max(seconds):.2f}), "
              f"peak RSS of the process {max(c['peak_mib'] for c in cached):.0f} MiB")
        print(f"  from Minari files only {first['seconds']:.2f} s, peak RSS of the process {first['peak_mib']:.0f} MiB "
              f"({1000 * first['seconds'] / episodes:.1f} ms per episode)")


if __name__ == "__main__":
    main()
