"""RSSM training time on a task's world-model datasets (the bench's: expert and noisy expert), seeds vmapped.

For each configuration (the quick budget's RSSM with `--set`-style changes, `base` for none) prints the first call's
seconds (compilation included) and the median seconds per 1,000 gradient steps over the later calls, with the
final mean loss. docs/recipes.md uses it to show the training is compute-bound (time follows batch x sequence).

    python benchmarks/rssm_throughput.py [--task fork] [--seeds 10] [--steps 1000] base batch_size=32 sequence_length=32
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from physgen.bench.protocol import BUDGETS
from physgen.bench.world import _splits, hyperparameters
from physgen.configs import override, parse_overrides
from physgen.envs import get_task
from physgen.world_models.rssm import RSSMConfig
from physgen.world_models.train import train_world_models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+", help="`base`, or field=value[,field=value...] of the RSSM's config")
    parser.add_argument("--task", default="fork")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=1000, help="gradient steps per configuration, in 4 calls")
    args = parser.parse_args()
    task = get_task(args.task)
    quick = hyperparameters("rssm-mpc", BUDGETS["quick"])["rssm"]
    configs = {spec: RSSMConfig.from_dict(override(quick, {} if spec == "base" else parse_overrides(spec)))
               for spec in args.configs}  # bad specs stop here, before anything trains
    train, _ = _splits(task)
    print(f"{task.name}: {train.num_steps:,} training frames, {args.seeds} seeds")
    for spec, config in configs.items():
        config = config.replace(steps=args.steps, steps_per_call=args.steps // 4)
        stamps = [time.perf_counter()]
        trained = train_world_models(task, config, train, list(range(args.seeds)), progress=False,
                                     callback=lambda done, model, params: stamps.append(time.perf_counter()))
        per_k = np.median(np.diff(stamps[1:])) / config.optim.steps_per_call * 1000
        print(f"{spec}: first call {stamps[1] - stamps[0]:.1f} s, {per_k:.1f} s per 1,000 steps, "
              f"final loss {trained.metrics['loss'][:, -1].mean():.3f}", flush=True)


if __name__ == "__main__":
    main()
