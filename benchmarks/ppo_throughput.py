"""PPO throughput on `hopper` (Gymnasium Hopper-v5 on a SyncVectorEnv), on this machine.

Trains PPO with the default config for a few updates, once with 1 seed and once with 5 seeds together in one
process, and prints env-steps/s summed over seeds: the median over updates (the first update, which compiles, is
left out), with the spread. Rollout stepping and the jitted update are both inside each measured update.

    python benchmarks/ppo_throughput.py [--updates 5]
"""

from __future__ import annotations

import argparse

import numpy as np

from physgen.envs import get_task
from physgen.policies.ppo import PPOConfig, train_ppo


def steps_per_second(seeds: int, updates: int) -> list[float]:
    config = PPOConfig(total_steps=(updates + 1) * PPOConfig.rollout_steps, eval_episodes=0, checkpoint_every=0)
    curve = train_ppo(get_task("hopper"), config, seeds=list(range(seeds)), progress=False)["curve"]
    walls = np.array([row["wall_s"] for row in curve])
    return list(config.steps_per_update * seeds / np.diff(walls))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=5, help="measured updates per case (2048 steps per seed each)")
    args = parser.parse_args()
    print(f"PPO on hopper, {PPOConfig.rollout_steps} steps per seed per update, {args.updates} measured updates")
    for seeds in (1, 5):
        rates = steps_per_second(seeds, args.updates)
        print(f"{seeds} seed(s): env-steps/s median {np.median(rates):>8,.0f}  "
              f"(min {min(rates):,.0f}, max {max(rates):,.0f}, n={len(rates)})")


if __name__ == "__main__":
    main()
