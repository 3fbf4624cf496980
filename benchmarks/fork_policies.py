"""The `fork` quality bar: diffusion and flow (>= 95% success over 10 seeds) against BC, which averages the modes.

Trains each method on `physgen/fork/expert-v0` (created if missing) with seeds 0..N-1 vmapped in one program,
evaluates every seed on the same evaluation episodes (paired), and prints per-seed success, the mean with a 95%
percentile-bootstrap interval over seeds (10,000 resamples, seeded), the collision rate, and the wall-clock time.
Saves a plot of sampled trajectories per method.

    python benchmarks/fork_policies.py [--seeds 10] [--steps 3000] [--episodes 100] [--out runs/fork_policies]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from physgen.data import ensure_dataset, split_episodes  # noqa: E402
from physgen.envs import fork, get_task  # noqa: E402
from physgen.envs.rollout import episode_seeds, run_episodes  # noqa: E402
from physgen.policies.agent import ChunkingAgent  # noqa: E402
from physgen.policies.policy import PolicyConfig  # noqa: E402
from physgen.policies.train import train_policies  # noqa: E402


def bootstrap_interval(values: np.ndarray, resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (resamples, len(values)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--methods", default="diffusion,flow,bc")
    parser.add_argument("--out", default="runs/fork_policies")
    args = parser.parse_args()
    task = get_task("fork")
    dataset = ensure_dataset(task)
    train, _ = split_episodes(dataset.trajectories, 0.1, seed=0)
    eval_seeds = episode_seeds(10_000, args.episodes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    methods = args.methods.split(",")
    figure, axes = plt.subplots(1, len(methods), figsize=(4 * len(methods), 4), squeeze=False)
    print(f"fork: {train.num_episodes} training episodes, {args.seeds} seeds, {args.steps} steps, "
          f"{args.episodes} evaluation episodes per seed (the same for every method)")
    for ax, method in zip(axes[0], methods):
        config = PolicyConfig.of(method=method, steps=args.steps)
        start = time.perf_counter()
        trained = train_policies(task, config, train, list(range(args.seeds)), progress=False)
        train_seconds = time.perf_counter() - start
        rollouts = run_episodes(task, ChunkingAgent(trained.policy), trained.states, eval_seeds)
        rates = rollouts.success.mean(axis=1)
        low, high = bootstrap_interval(rates)
        collisions = rollouts.events["collision"].any(-1).mean()
        print(f"{method:>9}: success {rates.mean():.3f} [95% CI {low:.3f}, {high:.3f}], collision {collisions:.3f}, "
              f"train {train_seconds:.0f} s; per seed {np.array2string(rates, precision=2)}", flush=True)
        ax.add_patch(plt.Circle((0, 0), fork.OBSTACLE_RADIUS, color="0.4"))
        for episode in range(min(30, args.episodes)):
            n = rollouts.lengths[0, episode]
            path = rollouts.observations[0, episode, : n + 1, :2]
            ax.plot(path[:, 0], path[:, 1], color="tab:red" if not rollouts.success[0, episode] else "tab:blue",
                    linewidth=0.8, alpha=0.7)
        ax.set(title=f"{method}: seed 0, success {rates[0]:.2f}", xlim=(-1.5, 1.5), ylim=(-1.5, 1.5), aspect="equal")
    figure.tight_layout()
    figure.savefig(out / "fork_trajectories.png", dpi=100)
    print(f"trajectories (blue: success, red: failure): {out / 'fork_trajectories.png'}")


if __name__ == "__main__":
    main()
