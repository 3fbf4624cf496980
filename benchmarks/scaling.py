"""Training throughput against device count: seed-steps/s of MLP flow training at hopper's full recipe size (batch 256,
width 256) with the seeds spread over 1, 2 and 4 devices (`train_policies(devices=N)`, `physgen.devices`).

Each device count runs in its own process, which gets that many devices from JAX: on a machine without
accelerators, XLA_FLAGS=--xla_force_host_platform_device_count=N splits the CPU into N host devices (they share the
CPU's cores, so they are not expected to be faster than one). Prints, per device count, the median seed-steps/s over
the timed calls (every call after the first, which compiles), its ratio to the first row's, and how far every
seed's training losses are from the first row's (bitwise equal where XLA's kernels compute a seed alike in both
group sizes: `physgen.devices`).

    python benchmarks/scaling.py [--devices 1,2,4] [--seeds 8] [--steps 50] [--calls 4] [--host-devices]

`--host-devices` forces the host devices even where an accelerator is present (without it, the workers use the
accelerators JAX finds, and the CPU only when there are none).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
from train_throughput import random_data  # this folder is on the path when the script runs

from physgen.bench.protocol import policy_config
from physgen.envs import get_task
from physgen.policies.train import train_policies


def worker(devices: int, seeds: int, steps: int, calls: int) -> dict:
    """Train `seeds` seeds on `devices` devices for `calls` calls of `steps` steps; the rates of calls 2 onwards."""
    task = get_task("hopper")
    config = policy_config(task, "flow", "full").replace(steps=calls * steps, steps_per_call=steps)
    marks = [time.perf_counter()]
    trained = train_policies(task, config, random_data(), list(range(seeds)), progress=False, devices=devices,
                             callback=lambda done, trained: marks.append(time.perf_counter()))
    rates = [seeds * steps / (end - start) for start, end in zip(marks[1:-1], marks[2:])]
    return {"devices": devices, "backend": jax.default_backend(), "rates": rates, "losses": trained.losses.tolist(),
            "batch_size": config.optim.batch_size, "hidden": config.net.hidden}


def run_worker(devices: int, args) -> dict:
    env = dict(os.environ)
    if args.host_devices or jax.default_backend() == "cpu":
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
        env["JAX_PLATFORMS"] = "cpu"
    command = [sys.executable, __file__, "--worker", str(devices), "--seeds", str(args.seeds), "--steps",
               str(args.steps), "--calls", str(args.calls)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"the worker for {devices} device(s) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", default="1,2,4", help="device counts, comma-separated")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=50, help="gradient steps per call")
    parser.add_argument("--calls", type=int, default=4, help="calls per run; the first compiles and is not timed")
    parser.add_argument("--host-devices", action="store_true", help="split the CPU into host devices")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.seeds, args.steps, args.calls)))
        return
    results = [run_worker(int(d), args) for d in args.devices.split(",")]
    first = results[0]
    print(f"MLP flow, hopper's full recipe (batch {first['batch_size']}, width {first['hidden']}), {args.seeds} seeds, "
          f"{args.steps} steps per call, median over {args.calls - 1} timed calls; backend {first['backend']}, "
          f"{os.cpu_count()} CPUs")
    print(f"{'devices':>8} {'seed-steps/s':>13} {'vs first':>9}  every seed's losses against the first row's")
    for result in results:
        rate = float(np.median(result["rates"]))
        gap = float(np.abs(np.asarray(result["losses"]) - np.asarray(first["losses"])).max())
        print(f"{result['devices']:>8} {rate:>13.0f} {rate / np.median(first['rates']):>8.2f}x  "
              f"{'bitwise equal' if gap == 0 else f'differ by up to {gap:.1e}'}")


if __name__ == "__main__":
    main()
