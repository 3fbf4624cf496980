"""`physgen bench`: train every method over seeds, evaluate all of them on the same episodes, categorize failures.

Results are stored in units of one (method, seed) (`physgen.bench.units`). The seeds of a method train together in
one compiled program (vmap over all of them: a seed's numbers depend, in the last bits, on the group it was trained
in), so a rerun skips every method whose units are all written and intact and trains a method with missing or
damaged units again as the same group, writing only those. An interrupted run loses at most the method in progress,
and a resumed run ends with the uninterrupted run's numbers. A lock file keeps a second run out of the same folder.
Every method is evaluated the same way: trained, made an agent, run with `run_episodes`, written into its units.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np
from rich.progress import Progress

from physgen.bench import world
from physgen.bench.failures import fit_support
from physgen.bench.protocol import (BUDGETS, METHODS, OFFLINE_METHODS, default_methods, fix_protocol,
                                    make_protocol, policy_config)
from physgen.bench.report import write_results_and_report
from physgen.bench.units import Curves, Evaluation, pending_units, read_unit, write_latency
from physgen.control.latency import measure_agent_latency, measure_latency
from physgen.data import ensure_dataset, split_episodes
from physgen.envs import Task, get_task
from physgen.errors import PhysgenError
from physgen.io import check_folder, folder_lock, read_json
from physgen.policies import ChunkingAgent, PolicyConfig, save_policy, train_policies
from physgen.policies.ppo import GaussianAgent, PPOConfig, agent_params, train_ppo


def _run_offline(out: Path, method: str, seeds: list[int], pending: list[int], evaluation: Evaluation, train,
                 protocol: dict, bar: Progress, job) -> None:
    config = PolicyConfig.from_dict(protocol["experiment"]["hyperparameters"][method])
    curves, final = Curves(evaluation, seeds), {}

    def at_point(done: int, trained) -> None:
        curves.add(done, ChunkingAgent(trained.policy), trained.states, done == config.steps)
        final["trained"] = trained
        bar.advance(job, len(seeds) * config.steps_per_call)

    train_policies(evaluation.task, config, train, seeds, progress=False, callback=at_point)
    trained = final["trained"]
    write_latency(out, method, measure_latency(trained.policy, trained.state_of(0), np.asarray(train.observations),
                                                evaluation.task.control_hz))
    for i, seed in enumerate(seeds):
        if seed in pending:
            save_policy(out / "checkpoints" / method / f"seed_{seed}", evaluation.task, trained, i)
    curves.write_units(out, method, pending)


def _run_ppo(out: Path, seeds: list[int], pending: list[int], evaluation: Evaluation, protocol: dict, bar: Progress,
             job) -> None:
    task = evaluation.task
    config = PPOConfig.from_dict(protocol["experiment"]["hyperparameters"]["ppo"])
    agent, curves, final = GaussianAgent.for_task(task, config), Curves(evaluation, seeds), {}
    total = config.num_updates * config.steps_per_update

    def at_point(env_steps: int, learners) -> None:
        curves.add(env_steps, agent, agent_params(learners), env_steps == total)
        final["params"] = agent_params(learners)

    train_ppo(task, config, seeds, out_dir=out / "checkpoints" / "ppo", progress=False, callback=at_point)
    bar.advance(job, len(seeds) * config.total_steps)
    first = jax.tree.map(lambda x: x[0], final["params"])
    observations = np.asarray(evaluation.dataset.trajectories.observations[:200])
    write_latency(out, "ppo", measure_agent_latency(agent, first, observations))
    curves.write_units(out, "ppo", pending)


def _resolve(task: Task, methods: list[str] | None, seeds: int | None, episodes: int | None, budget: str):
    if budget not in BUDGETS:
        raise PhysgenError(f"unknown budget {budget!r}; use one of {', '.join(BUDGETS)}")
    settings, note = BUDGETS[budget], None
    if methods is None:
        methods, note = default_methods(task, settings)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise PhysgenError(f"unknown method(s) {', '.join(unknown) or '(none given)'}; use some of {', '.join(METHODS)}")
    for name, value in (("seeds", seeds), ("episodes", episodes)):
        if value is not None and value < 1:
            raise PhysgenError(f"--{name} must be at least 1, got {value}")
    return list(dict.fromkeys(methods)), list(range(seeds or settings.seeds)), episodes or settings.episodes, note


def run_bench(task_name: str, methods: list[str] | None = None, seeds: int | None = None, episodes: int | None = None,
              budget: str = "quick", out: str | Path | None = None, progress: bool = True, videos: bool = True) -> Path:
    """Run (or resume) a benchmark and write protocol.json, units/, results.json, report.md, figures and videos."""
    started = time.perf_counter()
    task = get_task(task_name)
    methods, seeds, episodes, note = _resolve(task, methods, seeds, episodes, budget)
    out = check_folder(Path(out if out is not None else Path("runs") / "bench" / task.name).absolute(), "--out")
    dataset = ensure_dataset(task)
    protocol = make_protocol(task, methods, seeds, budget, episodes, dataset, note)
    with folder_lock(out, "physgen bench"):
        fix_protocol(out, protocol)
        _run_methods(out, task, methods, seeds, budget, dataset, protocol, progress)
        units = {m: [read_unit(out, m, s) for s in seeds] for m in methods}
        latency = {m: read_json(out / "units" / m / "latency.json") for m in methods}
        write_results_and_report(out, task, protocol, units, latency, time.perf_counter() - started, videos=videos)
    return out


def _run_methods(out: Path, task: Task, methods: list[str], seeds: list[int], budget: str, dataset, protocol: dict,
                 progress: bool) -> None:
    """Train and evaluate every method whose units are not all written and intact."""
    train, validation = split_episodes(dataset.trajectories, validation_fraction=0.1, seed=0)
    support = fit_support(train.observations, validation.observations, seed=0)
    evaluation = Evaluation(task, dataset, support, protocol["experiment"])
    settings = BUDGETS[budget]
    work = {"ppo": settings.ppo_steps, "rssm-mpc": settings.rssm_steps, "ppo-wm": settings.dream_steps}
    work = {m: work[m] if m in work else policy_config(task, m, budget).steps for m in methods}
    with Progress(disable=not progress) as bar:
        job = bar.add_task(f"bench {task.name} ({budget})", total=sum(work[m] * len(seeds) for m in methods))
        for method in methods:
            pending = pending_units(out, method, seeds)
            if not pending:
                bar.advance(job, work[method] * len(seeds))
                continue
            bar.update(job, description=f"bench {task.name} ({budget}): {method}, {len(seeds)} seeds")
            if method in OFFLINE_METHODS:
                _run_offline(out, method, seeds, pending, evaluation, train, protocol, bar, job)
            elif method == "ppo":
                _run_ppo(out, seeds, pending, evaluation, protocol, bar, job)
            else:
                {"rssm-mpc": world.run_rssm_mpc, "ppo-wm": world.run_ppo_wm}[method](
                    out, seeds, pending, evaluation, protocol)
                bar.advance(job, work[method] * len(seeds))
