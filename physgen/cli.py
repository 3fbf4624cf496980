"""`physgen` sub-commands: parse, call the library, print. A PhysgenError becomes one line and exit code 2."""

from __future__ import annotations

import argparse
import sys

from physgen.errors import PhysgenError


def _tasks(args: argparse.Namespace) -> None:
    from physgen.envs import list_tasks

    for task in list_tasks():
        print(f"{task.name}: {task.summary}\n"
              f"  observation {task.obs_dim}, action {task.act_dim}, {task.control_hz:g} Hz, horizon {task.horizon}\n"
              f"  success: {task.success_rule}\n"
              f"  events: {', '.join(task.events)}\n"
              f"  demonstrations: {task.demonstrations}\n"
              f"  gymnasium id: {task.gym_id}")


def _data(args: argparse.Namespace) -> None:
    from physgen.data import generate_dataset, load_dataset
    from physgen.envs import get_task

    task = get_task(args.task)
    for policy in [args.policy] if args.policy else task.datasets:
        path = generate_dataset(task, episodes=args.episodes, seed=args.seed, policy=policy)
        dataset = load_dataset(task, path.name)
        meta, data = dataset.metadata, dataset.trajectories
        scores = ", ".join(f"{key} {meta[key]:.3f}" for key in ("ref_min_score", "ref_max_score") if key in meta)
        print(f"wrote {dataset.dataset_id}: {data.num_episodes} episodes, {data.num_steps} steps ({scores}) at {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="physgen", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("tasks", help="list the tasks and what each declares").set_defaults(run=_tasks)

    data = commands.add_parser("data", help="roll out a task's expert and write a Minari dataset")
    data.add_argument("--task", required=True)
    data.add_argument("--episodes", type=int, default=None, help="default: the task's dataset size")
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--policy", default=None,
                      help="expert, random, or another of the task's demonstrators; writes <policy>-v0. "
                      "Default: the task's standard datasets (expert-v0; hopper also medium-v0)")
    data.set_defaults(run=_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except PhysgenError as error:
        print(f"physgen: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("physgen: interrupted; nothing half-written was kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
