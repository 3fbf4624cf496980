"""The `hopper` quality bar (diffusion and flow reach >= 90% of the expert's return), one configuration at a time.

Each argument is a comma-separated list of `PolicyConfig` fields. The script trains that configuration on 90% of
`physgen/hopper/expert-v0` (created from the shipped expert if missing), seeds `--seed` .. `--seed + --seeds - 1`
(trained together, vmapped), and prints per seed the mean return of `--episodes` held-out evaluation episodes, its
share of the dataset's expert return, the mean episode length, the success rate, the last training loss and the
wall-clock time; with several seeds, then the mean and interquartile mean of the shares over seeds with 95%
percentile-bootstrap intervals. `--exec-steps` evaluates the same trained policies again with other numbers of
executed actions T_a (receding horizon), which need no retraining.

    python benchmarks/hopper_policies.py \\
        method=diffusion,action_steps=4,exec_steps=2,steps=30000 \\
        method=flow,action_steps=8,exec_steps=4,steps=30000 [--episodes 10] [--seed 0] [--seeds 1] [--exec-steps 2,1]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from physgen.stats import mean_interval
from physgen.data import ensure_dataset, split_episodes
from physgen.envs import get_task
from physgen.envs.rollout import episode_seeds, run_episodes
from physgen.errors import PhysgenError
from physgen.seeds import EVALUATION
from physgen.policies.agent import ChunkingAgent
from physgen.policies.policy import PolicyConfig
from physgen.policies.ppo import load_ppo_policy
from physgen.policies.train import train_policies


def parse_config(spec: str) -> PolicyConfig:
    """`field=value,...` as a PolicyConfig; each value is read as its field's default's type (a tuple as 64/128/256)."""
    items = [item.split("=", 1) for item in spec.split(",")]
    defaults = {field.name: field.default for field in dataclasses.fields(PolicyConfig)}
    bad = [item[0] for item in items if len(item) != 2 or item[0] not in defaults]
    if bad:
        raise PhysgenError(f"{spec!r}: {', '.join(bad)} is not a PolicyConfig field=value; write e.g. "
                           "method=diffusion,steps=30000")
    values = {}
    for name, text in items:
        kind = type(defaults[name])
        try:
            values[name] = tuple(int(v) for v in text.split("/")) if kind is tuple else kind(text)
        except ValueError:
            wanted = {int: "an integer", float: "a number", tuple: "integers separated by /"}[kind]
            raise PhysgenError(f"{spec!r}: {name} must be {wanted}, got {text!r}") from None
    return PolicyConfig.of(**{"batch_size": 256, "steps_per_call": 3000, **values})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="the first training seed")
    parser.add_argument("--seeds", type=int, default=1, help="how many consecutive seeds, trained together")
    parser.add_argument("--exec-steps", default="", help="comma-separated T_a values to evaluate besides the config's")
    args = parser.parse_args()
    try:
        configs = [parse_config(spec) for spec in args.configs]
        exec_steps = [int(k) for k in args.exec_steps.split(",") if k]
        # per config: itself, then the same policy with each other T_a (built here so a bad T_a stops before training)
        evaluated = [[config, *(config.replace(exec_steps=k) for k in exec_steps
                                if k != config.chunking.exec_steps)] for config in configs]
    except ValueError:
        parser.exit(2, f"physgen: error: --exec-steps must be integers separated by commas, got {args.exec_steps!r}\n")
    except PhysgenError as error:
        parser.exit(2, f"physgen: error: {error}\n")
    if args.seeds < 1 or args.episodes < 1:
        parser.exit(2, "physgen: error: --seeds and --episodes must be at least 1\n")
    seeds = list(range(args.seed, args.seed + args.seeds))
    task = get_task("hopper")
    dataset = ensure_dataset(task, load_demonstrator=load_ppo_policy)
    train, _ = split_episodes(dataset.trajectories, 0.1, seed=0)
    expert = dataset.metadata["ref_max_score"]
    for spec, (config, *variants) in zip(args.configs, evaluated):
        start = time.perf_counter()
        trained = train_policies(task, config, train, seeds, progress=False)
        for variant in [config, *variants]:
            policy = trained.policy._replace(config=variant)
            result = run_episodes(task, ChunkingAgent(policy), trained.states,
                                  episode_seeds(EVALUATION, args.episodes), expert)
            label = spec if variant is config else f"  same policies, exec_steps={variant.chunking.exec_steps}"
            means = result.returns.mean(axis=1)
            for index, (seed, mean) in enumerate(zip(seeds, means, strict=True)):
                print(f"{label} seed {seed}: return {mean:.0f} ({mean / expert:.0%} of {expert:.0f}), "
                      f"length {result.lengths[index].mean():.0f}, success {result.success[index].mean():.2f}, "
                      f"loss {trained.losses[index, -1]:.4f}, {time.perf_counter() - start:.0f} s", flush=True)
            if len(seeds) > 1:
                s = mean_interval(100 * result.returns / expert)  # the report's interval for returns
                print(f"{label} over seeds {seeds[0]}-{seeds[-1]}: mean {s.estimate:.1f}% [{s.low:.1f}, "
                      f"{s.high:.1f}] of the expert", flush=True)


if __name__ == "__main__":
    main()
