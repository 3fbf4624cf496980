"""`physgen` sub-commands: parse, call the library, print. A PhysgenError becomes one line and exit code 2."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from physgen.bench import run_bench
from physgen.bench.compare import compare_runs
from physgen.bench.experiments import read_experiment
from physgen.bench.protocol import BUDGETS, describe_recipe
from physgen.bench.registry import REGISTRY
from physgen.configs import override, parse_overrides, parse_variants
from physgen.bench.sweep import DELAY_MODES, sweep_delay, sweep_steps
from physgen.bench.video import checkpoint_videos
from physgen.control import export_checkpoint
from physgen.devices import initialize, is_writer, seed_mesh, written_folder
from physgen.data import generate_dataset, load_dataset, split_episodes, with_reference_scores
from physgen.envs import get_task, list_tasks
from physgen.envs.registry import OBSERVATIONS
from physgen.envs.rollout import episode_seeds, run_episodes
from physgen.errors import PhysgenError
from physgen.interrupts import stoppable
from physgen.io import check_folder, read_json
from physgen.plan import RUNS, seeds_needed, spread_from_rates
from physgen.policies import ChunkingAgent, PolicyConfig, distill_checkpoint, save_policy, train_policies
from physgen.policies.ppo import load_ppo_policy
from physgen.policies.ppo import train_from_cli as train_ppo_from_cli
from physgen.seeds import TUNING
from physgen.world_models import train_from_cli as train_world_model_from_cli
from physgen.world_models.data import generate_noisy_dataset


def _check_minimums(args: argparse.Namespace, **minimums: int) -> None:
    for name, minimum in minimums.items():
        if getattr(args, name) < minimum:
            raise PhysgenError(f"--{name.replace('_', '-')} must be at least {minimum}, got {getattr(args, name)}")


def _integers(text: str, flag: str, example: str) -> list[int]:
    try:
        return [int(k) for k in text.split(",")]
    except ValueError:
        raise PhysgenError(f"{flag} takes comma-separated integers such as {example}, got {text!r}") from None


def _tasks(args: argparse.Namespace) -> None:
    for task in list_tasks():
        print(f"{task.name}: {task.summary}\n"
              f"  observation {task.obs_dim}, action {task.act_dim}, {task.control_hz:g} Hz, horizon {task.horizon}\n"
              f"  success: {task.success_rule}\n"
              f"  events: {', '.join(task.events)} (failures: {', '.join(task.failure_events) or 'none'})\n"
              f"  demonstrations: {task.demonstrations}\n"
              f"  gymnasium id: {task.gym_id}\n"
              + "".join(f"  recipe: {line}\n" for line in describe_recipe(task)).rstrip("\n"))


def _data(args: argparse.Namespace) -> None:
    task = get_task(args.task, args.obs)
    for policy in [args.policy] if args.policy else task.datasets:
        if policy == "noisy":
            path = generate_noisy_dataset(task, args.episodes or task.dataset_episodes, args.seed)
        else:
            path = generate_dataset(task, episodes=args.episodes, seed=args.seed, policy=policy,
                                    load_demonstrator=load_ppo_policy)
        dataset = load_dataset(task, path.name)
        meta, data = dataset.metadata, dataset.trajectories
        scores = ", ".join(f"{key} {meta[key]:.3f}" for key in ("ref_min_score", "ref_max_score") if key in meta)
        print(f"wrote {dataset.dataset_id}: {data.num_episodes} episodes, {data.num_steps} steps ({scores}) at {path}")


def _train(args: argparse.Namespace) -> None:
    initialize(args.coordinator, args.processes, args.process_id)  # before anything starts JAX's backend
    task = get_task(args.task, args.obs)
    _check_minimums(args, seeds=1, episodes=1, eval_seed=0)
    out = check_folder(Path(args.out) / task.name / args.method, "--out")
    overrides = parse_overrides(args.set) if args.set else {}
    if "method" in overrides:
        raise PhysgenError("--set cannot change the method; pass it as --method")
    seed_mesh(args.devices)  # a count JAX cannot provide is refused before any work
    if args.method in ("ppo", "rssm", "vae"):
        with written_folder(out) as folder:  # every process saves (orbax waits for all); process 0's files stay
            if args.method == "ppo":
                summary = train_ppo_from_cli(task.name, list(range(args.seeds)), args.steps, str(folder), overrides,
                                             args.devices)
            else:
                datasets = tuple(args.dataset.split(",")) if args.dataset else ("expert-v0",)
                summary = train_world_model_from_cli(task.name, args.method, list(range(args.seeds)), args.steps,
                                                     str(folder.absolute()), datasets, images=args.images,
                                                     overrides=overrides, devices=args.devices)
        if is_writer():
            print(summary)
        return
    if args.dataset and "," in args.dataset:
        raise PhysgenError(f"--dataset takes one dataset for {args.method}, got {args.dataset!r}; only the world "
                           "models (rssm, vae) learn from a comma-separated list")
    changes = {key: value for key, value in (("steps", args.steps), ("network", args.network)) if value is not None}
    config = PolicyConfig.from_dict(override(PolicyConfig.of(method=args.method, **changes).as_flat(), overrides))
    dataset = with_reference_scores(task, load_dataset(task, args.dataset or "expert-v0"), load_ppo_policy)
    train, _ = split_episodes(dataset.trajectories, validation_fraction=0.1, seed=0)
    seeds = list(range(args.seeds))
    trained = train_policies(task, config, train, seeds, devices=args.devices)
    with written_folder(out) as folder:  # every process saves (orbax waits for all); process 0's files stay
        for index, seed in enumerate(seeds):
            save_policy(folder / f"seed_{seed}", task, trained, index)
            if is_writer():
                print(f"seed {seed}: final training loss {trained.losses[index, -1]:.4f}, checkpoint "
                      f"{out / f'seed_{seed}'}")
    rollouts = run_episodes(task, ChunkingAgent(trained.policy), trained.states,
                            episode_seeds(args.eval_seed, args.episodes), dataset.metadata.get("ref_max_score"),
                            devices=args.devices)
    rates = ", ".join(f"{rate:.2f}" for rate in rollouts.success.mean(axis=1))
    if is_writer():
        print(f"success over {args.episodes} evaluation episodes per seed: {rates}")


EXPERIMENT_FLAGS = ("task", "methods", "seeds", "episodes", "budget", "dataset", "set", "vary")


def _bench(args: argparse.Namespace) -> None:
    initialize(args.coordinator, args.processes, args.process_id)  # before anything starts JAX's backend
    given = [f"--{flag}" for flag in EXPERIMENT_FLAGS if getattr(args, flag) is not None]
    given += ["--obs"] if args.obs != "state" else []
    if args.config:
        if given:
            raise PhysgenError(f"{', '.join(given)} given with --config; put them in {args.config}, or leave out "
                               "--config")
        experiment = read_experiment(args.config)
    elif args.task is None:
        raise PhysgenError("physgen bench needs --task (or an experiment file: --config FILE.toml)")
    else:
        experiment = {"task_name": get_task(args.task, args.obs).name, "seeds": args.seeds, "episodes": args.episodes,
                      "budget": args.budget or "quick", "dataset": args.dataset or "expert-v0",
                      "methods": [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None,
                      "overrides": parse_overrides(args.set) if args.set else None,
                      "variants": parse_variants(args.vary) if args.vary else None}
    out = run_bench(**experiment, out=args.out, videos=not args.no_videos, devices=args.devices)
    if is_writer():
        print(f"report: {out / 'report.md'}\nresults: {out / 'results.json'}")


def _compare(args: argparse.Namespace) -> None:
    out = compare_runs(args.runs, args.out)
    print(f"report: {out / 'report.md'}\nresults: {out / 'results.json'}")


def _video(args: argparse.Namespace) -> None:
    _check_minimums(args, episodes=1)
    check_folder(Path(args.out), "--out")
    for path in checkpoint_videos(get_task(args.task), Path(args.checkpoint), args.episodes, Path(args.out)):
        print(path)


def _export(args: argparse.Namespace) -> None:
    out = Path(args.out or f"policy.{args.format}")
    check_folder(out.absolute().parent, "--out")
    path = export_checkpoint(args.checkpoint, out, steps=args.sampler_steps, format=args.format, weights=args.weights)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


def _distill(args: argparse.Namespace) -> None:
    out = Path(args.out or f"{Path(args.checkpoint).absolute()}-1step")
    check_folder(out.parent, "--out")
    path, student = distill_checkpoint(args.checkpoint, out, steps=args.steps, dataset=args.dataset)
    print(f"seed {student.seeds[0]}: final distillation loss {student.losses[0, -1]:.4g}, one-step checkpoint "
          f"{path}\nevaluate it with: physgen sweep-steps --checkpoint {path} --sampler-steps 1")


def _sweep_steps(args: argparse.Namespace) -> None:
    steps = _integers(args.sampler_steps, "--sampler-steps", "1,2,5,10")
    _check_minimums(args, episodes=1)
    check_folder(Path(args.out), "--out")
    sweep_steps(args.checkpoint, steps, args.episodes, args.out)


def _sweep_delay(args: argparse.Namespace) -> None:
    delays = _integers(args.delays, "--delays", "0,1,2,4,8")
    _check_minimums(args, episodes=1)
    check_folder(Path(args.out), "--out")
    sweep_delay(args.checkpoint, delays, args.episodes, args.out, tuple(m for m in args.modes.split(",") if m))


def _plan(args: argparse.Namespace) -> None:
    episodes = _integers(args.episodes, "--episodes", "10,100")
    if min(episodes) < 1 or not 0 < args.power < 1:
        raise PhysgenError(f"--episodes must be at least 1 and --power between 0 and 1, got {episodes}, {args.power}")
    spread, baseline = args.spread, args.baseline
    if args.bench:
        results = read_json(Path(args.bench) / "results.json")
        if results is None:
            raise PhysgenError(f"no readable results.json in {args.bench}; pass a finished physgen bench folder")
        summary, per_seed = results["summary"], results["run"]["episodes"]
        if spread is None:
            spread = max(spread_from_rates(s["per_seed_success"], per_seed) for s in summary.values())
        if baseline is None:
            baseline = min(s["success_mean"]["estimate"] for s in summary.values())
    if baseline is None:
        raise PhysgenError("--baseline is needed (or --bench, to take the lowest success rate of a finished run)")
    spread = 1.2 if spread is None else spread
    print(f"baseline {baseline:.2f}, difference {args.difference:+.2f}, seed spread {spread:.2f} (log-odds sd), "
          f"{args.power:.0%} power, 95% intervals; {RUNS:,} simulated comparisons per try")
    print("| episodes per seed | seeds per method | episodes per method | power |\n|---|---|---|---|")
    for count in episodes:
        seeds, reached = seeds_needed(baseline, args.difference, spread, count, args.power)
        print(f"| {count} | {seeds if seeds else 'over 200'} | {f'{seeds * count:,}' if seeds else '-'} | "
              f"{reached:.2f} |")


# the methods `physgen train` trains by themselves: those whose checkpoints act (`Method.load`)
TRAINABLE = tuple(name for name, method in REGISTRY.items() if method.load)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="physgen", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("tasks", help="list the tasks and what each declares").set_defaults(run=_tasks)

    data = commands.add_parser("data", help="roll out a task's expert and write a Minari dataset")
    data.add_argument("--task", required=True)
    data.add_argument("--episodes", type=int, default=None, help="default: the task's dataset size")
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--policy", default=None,
                      help="expert, random, noisy (pure-JAX tasks: the expert with action noise 1.0, for world "
                      "models), or another of the task's demonstrators; writes <policy>-v0. "
                      "Default: the task's standard datasets (expert-v0; hopper also medium-v0)")
    data.set_defaults(run=_data)

    train = commands.add_parser("train", help="train a policy (offline methods: on the task's expert dataset; ppo: "
                                "online) or a world model (rssm, vae), one checkpoint per seed")
    train.add_argument("--task", required=True)
    train.add_argument("--method", required=True, choices=(*TRAINABLE, "rssm", "vae"))
    train.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1, trained together (vmapped)")
    train.add_argument("--steps", type=int, default=None,
                       help="gradient steps, or environment steps per seed for ppo (default: the method's config)")
    train.add_argument("--network", choices=("mlp", "unet"), default=None)
    train.add_argument("--images", action="store_true", help="vae: learn rendered frames (pure-JAX tasks)")
    train.add_argument("--dataset", default=None, help="default expert-v0; any local Minari dataset id (e.g. "
                       "recorded with minari.DataCollector); world models take a comma-separated list, e.g. "
                       "expert-v0,noisy-v0")
    train.add_argument("--episodes", type=int, default=100, help="evaluation episodes per seed (pure-JAX tasks)")
    train.add_argument("--eval-seed", type=int, default=TUNING, help="seed of the evaluation episodes")
    train.add_argument("--devices", default=None, help="spread the seeds over N devices, or 'all' (training, and "
                       "the offline policies' pure-JAX evaluation; default one): docs/howto/gpu.md")
    train.add_argument("--set", default=None, help="field=value[,field=value...]: change any field of the "
                       "method's config, e.g. exec_steps=1,prediction=epsilon")
    train.add_argument("--out", default="runs")
    train.set_defaults(run=_train)

    bench = commands.add_parser("bench", help="train every method over seeds, evaluate on shared episodes, report "
                                "success with confidence intervals, failure categories and videos")
    bench.add_argument("--task", default=None, help="required unless --config names it")
    bench.add_argument("--config", default=None, metavar="FILE.toml", help="an experiment file (task, methods, "
                       "seeds, budget, [set], [vary]; experiments/ has examples); every run writes its own as "
                       "experiment.toml")
    bench.add_argument("--methods", default=None, help=f"comma-separated, from {', '.join(REGISTRY)} (default: "
                       "the offline ones, and the online ones where the budget allows; flow-1step only when named)")
    bench.add_argument("--seeds", type=int, default=None, help="training seeds 0..N-1 (default: the budget's, 10)")
    bench.add_argument("--episodes", type=int, default=None, help="evaluation episodes per seed (default: budget's)")
    bench.add_argument("--budget", choices=tuple(BUDGETS), default=None, help="default: quick")
    bench.add_argument("--dataset", default=None, help="the offline methods' dataset: physgen's own of the task "
                       "(default expert-v0, generated when missing) or any local Minari dataset id, e.g. one "
                       "recorded with minari.DataCollector; checked against the task's spaces")
    bench.add_argument("--out", default=None, help="default: runs/bench/<task>; rerunning resumes")
    bench.add_argument("--no-videos", action="store_true", help="skip rendering the failure videos")
    bench.add_argument("--set", default=None, help="field=value[,field=value...]: change any field of the methods' "
                       "configs (those that have it; part.field for one part, e.g. rssm.steps), recorded in the "
                       "protocol")
    bench.add_argument("--vary", action="append", default=None, metavar="FIELD=V1,V2,...",
                       help="a row of every method for each value (rows such as flow[exec_steps=2]); several --vary "
                       "make a grid. Rows differing only in T_a, sampler steps or ensembling share one training")
    bench.add_argument("--devices", default=None, help="spread every row's seeds over N devices, or 'all' "
                       "(default one; not part of the experiment): docs/howto/gpu.md")
    for sub in (data, train, bench):
        sub.add_argument("--obs", choices=OBSERVATIONS, default="state", help="image: the task seen through its "
                         "camera (<task>-image: 32x32 RGB frames, uint8; fork, maze, push), for image policies")
    for sub in (train, bench):
        sub.add_argument("--coordinator", default=None, metavar="HOST:PORT", help="join a run of several processes "
                         "(jax.distributed): process 0's address, or 'auto' to let JAX read it under SLURM or Open MPI")
        sub.add_argument("--processes", type=int, default=None, help="the number of processes (with --coordinator)")
        sub.add_argument("--process-id", type=int, default=None, help="this process's index, from 0 (with "
                         "--coordinator)")
    bench.set_defaults(run=_bench)

    compare = commands.add_parser("compare", help="one report over finished bench runs that share their task, seeds, "
                                  "evaluation episodes and dataset (a method run later beside earlier ones)")
    compare.add_argument("runs", nargs="+", metavar="RUN", help="the --out folders of finished physgen bench runs")
    compare.add_argument("--out", default=None, help="default: runs/compare/<task>")
    compare.set_defaults(run=_compare)

    video = commands.add_parser("video", help="roll out a checkpoint and write one video per episode")
    video.add_argument("--task", required=True)
    video.add_argument("--checkpoint", required=True)
    video.add_argument("--episodes", type=int, default=3)
    video.add_argument("--out", default="videos")
    video.set_defaults(run=_video)

    export = commands.add_parser("export", help="a checkpoint's sampler, normalizers and parameters as one "
                                 "jax.export (StableHLO) file, loadable with physgen.control.load_exported, or as "
                                 "an ONNX model (docs/howto/export.md)")
    export.add_argument("--checkpoint", required=True)
    export.add_argument("--format", default="jaxexport",
                        help="jaxexport (default) or onnx (needs the onnx extra: pip install 'physgen[onnx]')")
    export.add_argument("--out", default=None, help="default: policy.jaxexport or policy.onnx, after --format")
    export.add_argument("--sampler-steps", type=int, default=None,
                        help="denoising or integration steps (default: the checkpoint's config)")
    export.add_argument("--weights", default=None, help="how the file stores the weight matrices: float32, bfloat16 "
                        "or int8 (default: the checkpoint config's; docs/howto/export.md)")
    export.set_defaults(run=_export)

    distill = commands.add_parser("distill", help="distil a flow checkpoint, or a diffusion one sampled by DDIM at "
                                  "eta 0, into a flow policy that samples in one network call, trained on the "
                                  "teacher's training split (docs/concepts/generative-policies.md)")
    distill.add_argument("--checkpoint", required=True, help="the teacher's checkpoint folder")
    distill.add_argument("--steps", type=int, default=None,
                         help="distillation gradient steps (default: as many as the teacher trained)")
    distill.add_argument("--dataset", default="expert-v0",
                         help="the dataset the teacher was trained on (default expert-v0); its training split is used")
    distill.add_argument("--out", default=None, help="default: the teacher's folder with -1step appended")
    distill.set_defaults(run=_distill)

    sweep = commands.add_parser("sweep-steps", help="success (Wilson intervals) and latency for each number of "
                                "denoising or integration steps of one checkpoint, without retraining")
    sweep.add_argument("--checkpoint", required=True)
    sweep.add_argument("--sampler-steps", default="1,2,5,10,20,50,100",
                       help="comma-separated numbers of denoising or integration steps")
    sweep.add_argument("--episodes", type=int, default=100)
    sweep.add_argument("--out", default="sweep")
    sweep.set_defaults(run=_sweep_steps)
    delay = commands.add_parser("sweep-delay", help="success (Wilson intervals) against the delay with which chunks "
                                "arrive, switching chunks hard, by temporal ensembling or by real-time chunking")
    delay.add_argument("--checkpoint", required=True)
    delay.add_argument("--delays", default="0,1,2,4,8", help="comma-separated delays in control steps: a chunk "
                       "sampled from step t's observation first acts at step t + delay (at most T_p - T_a)")
    delay.add_argument("--modes", default=",".join(DELAY_MODES), help="comma-separated: hard (the newest chunk "
                       "acts), ensemble (temporal ensembling), rtc (real-time chunking)")
    delay.add_argument("--episodes", type=int, default=100)
    delay.add_argument("--out", default="sweep-delay")
    delay.set_defaults(run=_sweep_delay)
    plan = commands.add_parser("plan", help="how many seeds and episodes per method a comparison needs to detect a "
                               "difference in success rate, by simulated runs (docs/intervals.md)")
    plan.add_argument("--baseline", type=float, default=None, help="the baseline's success rate")
    plan.add_argument("--difference", type=float, required=True, help="the smallest difference worth detecting")
    plan.add_argument("--spread", type=float, default=None, help="seeds' spread, the log-odds standard deviation of "
                      "their success rates (default: estimated from --bench, else 1.2)")
    plan.add_argument("--bench", default=None, help="a finished physgen bench folder to estimate the spread (and the "
                      "baseline, its lowest success rate) from")
    plan.add_argument("--power", type=float, default=0.8)
    plan.add_argument("--episodes", default="10,20,50,100", help="comma-separated episodes per seed to plan for")
    plan.set_defaults(run=_plan)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with stoppable():  # SIGTERM (kill, a job scheduler) cleans up as Ctrl-C does: no staging or partial files
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
