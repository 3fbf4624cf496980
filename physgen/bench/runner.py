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

from rich.progress import Progress

from physgen.bench.failures import fit_support
from physgen.bench.method import Job, Method
from physgen.bench.protocol import BUDGETS, fix_protocol, make_protocol, overridden
from physgen.bench.registry import default_methods, get_methods
from physgen.bench.report import write_results_and_report
from physgen.bench.units import Evaluation, pending_units, read_unit
from physgen.data import ensure_dataset, split_episodes
from physgen.envs import Task, get_task
from physgen.errors import PhysgenError
from physgen.io import check_folder, folder_lock, read_json
from physgen.policies.ppo import load_ppo_policy


def _resolve(task: Task, methods: list[str] | None, seeds: int | None, episodes: int | None, budget: str):
    if budget not in BUDGETS:
        raise PhysgenError(f"unknown budget {budget!r}; use one of {', '.join(BUDGETS)}")
    settings, note = BUDGETS[budget], None
    if methods is None:
        methods, note = default_methods(task, settings)
    for name, value in (("seeds", seeds), ("episodes", episodes)):
        if value is not None and value < 1:
            raise PhysgenError(f"--{name} must be at least 1, got {value}")
    return get_methods(methods), list(range(seeds or settings.seeds)), episodes or settings.episodes, note


def run_bench(task_name: str, methods: list[str] | None = None, seeds: int | None = None, episodes: int | None = None,
              budget: str = "quick", out: str | Path | None = None, progress: bool = True, videos: bool = True,
              overrides: dict[str, str] | None = None) -> Path:
    """Run (or resume) a benchmark and write protocol.json, units/, results.json, report.md, figures and videos;
    `overrides` ({field: value text}, as `--set`) change the methods' hyperparameters."""
    started = time.perf_counter()
    task = get_task(task_name)
    methods, seeds, episodes, note = _resolve(task, methods, seeds, episodes, budget)
    hyper = overridden(task, methods, budget, overrides or {})  # bad values refused before any work
    out = check_folder(Path(out if out is not None else Path("runs") / "bench" / task.name).absolute(), "--out")
    dataset = ensure_dataset(task, load_demonstrator=load_ppo_policy)
    protocol = make_protocol(task, methods, seeds, budget, episodes, dataset, note, hyper, overrides or {})
    with folder_lock(out, "physgen bench"):
        fix_protocol(out, protocol)
        _run_methods(out, task, methods, seeds, budget, dataset, protocol, progress)
        units = {m.name: [read_unit(out, m.name, s) for s in seeds] for m in methods}
        latency = {m.name: read_json(out / "units" / m.name / "latency.json") for m in methods}
        write_results_and_report(out, task, protocol, units, latency, time.perf_counter() - started, videos=videos)
    return out


def _run_methods(out: Path, task: Task, methods: list[Method], seeds: list[int], budget: str, dataset,
                 protocol: dict, progress: bool) -> None:
    """Train and evaluate every method whose units are not all written and intact."""
    train, validation = split_episodes(dataset.trajectories, validation_fraction=0.1, seed=0)
    support = fit_support(train.observations, validation.observations, seed=0)
    evaluation = Evaluation(task, dataset, support, protocol["experiment"])
    hyperparameters = protocol["experiment"]["hyperparameters"]
    work = {m.name: m.work(hyperparameters[m.name]) * len(seeds) for m in methods}
    with Progress(disable=not progress) as bar:
        job = bar.add_task(f"bench {task.name} ({budget})", total=sum(work.values()))
        done = 0
        for method in methods:
            pending = pending_units(out, method.name, seeds)
            if pending:
                bar.update(job, description=f"bench {task.name} ({budget}): {method.name}, {len(seeds)} seeds")
                values = hyperparameters[method.name]
                method.run(Job(out, task, seeds, pending, evaluation, values, method.configure(values), train,
                               lambda steps: bar.advance(job, steps * len(seeds))))
            done += work[method.name]
            bar.update(job, completed=done)
