"""`physgen bench`: train every method over seeds, evaluate all of them on the same episodes, categorize failures.

A run's rows are its methods, or with `--vary` every method once per combination of the varied values
(`flow[exec_steps=2]`). Results are stored in units of one (row, seed) (`physgen.bench.units`). The seeds of a row
train together in one compiled program (vmap over all of them: a seed's numbers depend, in the last bits, on the
group it was trained in), and rows that differ only in evaluation fields (T_a, sampler steps, ensembling) share one
training. A rerun skips every row whose units are all written and intact and trains a row with missing or damaged
units again as the same group, writing only those. An interrupted run loses at most the training in progress, and a
resumed run ends with the uninterrupted run's numbers. A lock file keeps a second run out of the same folder.
Every method is evaluated the same way: trained, made an agent, run with `run_episodes`, written into its units.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import numpy as np
from rich.markup import escape
from rich.progress import Progress

from physgen.bench.experiments import experiment_toml
from physgen.bench.failures import fit_support
from physgen.bench.method import Job, Method, Variant
from physgen.bench.protocol import BUDGETS, fix_protocol, make_protocol, make_rows
from physgen.bench.registry import default_methods, get_methods
from physgen.bench.report import write_results_and_report
from physgen.bench.writeup import write_writeup
from physgen.bench.units import Evaluation, latency_path, pending_units, read_unit
from physgen.data import ensure_dataset, split_episodes
from physgen.devices import agreed, fit_mesh, is_writer, mesh_size, seed_mesh, writer_first, written_folder
from physgen.envs import Task, get_task
from physgen.errors import PhysgenError
from physgen.io import check_folder, folder_lock, read_json, write_json, write_text
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
    return get_methods(methods, task), list(range(seeds or settings.seeds)), episodes or settings.episodes, note


def run_bench(task_name: str, methods: list[str] | None = None, seeds: int | None = None, episodes: int | None = None,
              budget: str = "quick", out: str | Path | None = None, progress: bool = True, videos: bool = True,
              overrides: dict[str, str] | None = None, variants: dict[str, list[str]] | None = None,
              dataset: str = "expert-v0", devices: int | str | None = None) -> Path:
    """Run (or resume) a benchmark and write protocol.json, units/, results.json, report.md, writeup.md, figures and
    videos; `overrides` ({field: value text}, as `--set`) change the methods' hyperparameters, `variants` ({field:
    [value texts]}, as `--vary`) make a row of every method for each combination of values; `dataset`: the offline
    methods' dataset, physgen's own of the task (generated when missing) or any local Minari dataset id; `devices`
    (a count or "all", as `--devices`) spreads every row's seeds over up to that many devices in training and
    evaluation (`physgen.devices`: the numbers of one device, or of each device's group of seeds on one device,
    which may differ from them in the last bits). With several processes (`physgen.devices.initialize`) every
    process runs this call, and only process 0 writes `out` (`physgen.devices.written_folder`)."""
    started = time.perf_counter()
    task = get_task(task_name)
    methods, seeds, episodes, note = _resolve(task, methods, seeds, episodes, budget)
    # a count JAX cannot provide is refused before any work; the run records the devices its seeds fill
    devices = mesh_size(fit_mesh(seed_mesh(devices), len(seeds)))
    rows = make_rows(task, methods, budget, overrides or {}, variants or {})  # bad values refused before any work
    out = check_folder(Path(out if out is not None else Path("runs") / "bench" / task.name).absolute(), "--out")
    dataset = writer_first(lambda: ensure_dataset(task, dataset, load_demonstrator=load_ppo_policy))
    dataset_seconds = time.perf_counter() - started
    protocol = make_protocol(task, methods, seeds, budget, episodes, dataset, note, rows, overrides or {},
                             variants or {}, devices)
    progress = progress and is_writer()  # shown by process 0 alone
    with written_folder(out) as folder, folder_lock(folder, "physgen bench"):
        fix_protocol(folder, protocol)
        write_text(folder / "experiment.toml", experiment_toml(protocol["experiment"]))
        write_json(folder / "timing.json", {**(read_json(folder / "timing.json") or {}), "dataset": dataset_seconds})
        _run_methods(folder, task, methods, seeds, budget, dataset, protocol, progress, devices)
        if not is_writer():  # the others' folders lack the units an earlier run wrote; nothing here is collective
            return out
        units = {row: [read_unit(folder, row, s) for s in seeds] for row in rows}
        latency = {row: read_json(latency_path(folder, row)) for row in rows}
        write_results_and_report(folder, task, protocol, units, latency, time.perf_counter() - started,
                                 videos=videos, timing=read_json(folder / "timing.json"))
        write_writeup(folder)
    return out


def trainings(methods: list[Method], experiment: dict) -> list[tuple[Method, list[str]]]:
    """Each training a run needs: a method and the rows evaluated on it (those whose hyperparameters differ only in
    the method's evaluation fields), in the order of the methods and rows."""
    groups = {}
    for row, spec in experiment["rows"].items():
        method = next(m for m in methods if m.name == spec["method"])
        trained = {k: v for k, v in experiment["hyperparameters"][row].items() if k not in method.evaluation_fields}
        groups.setdefault((method.name, json.dumps(trained, sort_keys=True)), (method, []))[1].append(row)
    return sorted(groups.values(), key=lambda group: methods.index(group[0]))


def _run_methods(out: Path, task: Task, methods: list[Method], seeds: list[int], budget: str, dataset,
                 protocol: dict, progress: bool, devices: int) -> None:
    """Train every group of rows with a unit not written and intact, and evaluate those rows."""
    train, validation = split_episodes(dataset.trajectories, validation_fraction=0.1, seed=0)
    support = fit_support(train.observations, validation.observations, seed=0)
    experiment = protocol["experiment"]
    evaluation = Evaluation(task, dataset, support, experiment, devices)
    hyperparameters = experiment["hyperparameters"]
    groups = trainings(methods, experiment)
    work = [method.work(hyperparameters[rows[0]]) * len(seeds) for method, rows in groups]
    with Progress(disable=not progress) as bar:
        job = bar.add_task(f"bench {task.name} ({budget})", total=sum(work))
        for (method, rows), done in zip(groups, itertools.accumulate(work)):
            variants = [Variant(row, experiment["rows"][row]["varied"], hyperparameters[row],
                                method.configure(hyperparameters[row]), pending)
                        for row in rows if (pending := _pending(out, row, seeds))]
            if variants:
                names = escape(", ".join(rows))  # a row's brackets are not rich markup
                bar.update(job, description=f"bench {task.name} ({budget}): {names}, {len(seeds)} seeds")
                started, evaluating = time.perf_counter(), evaluation.seconds
                method.run(Job(out, task, seeds, variants, evaluation, train,
                               lambda steps: bar.advance(job, steps * len(seeds))))
                phase = {"evaluation": evaluation.seconds - evaluating}
                phase["training"] = time.perf_counter() - started - phase["evaluation"]
                write_json(out / "timing.json", {**read_json(out / "timing.json"), ", ".join(rows): phase})
                if progress:
                    bar.console.print(f"{names}: trained in {phase['training']:.0f} s, evaluated in "
                                      f"{phase['evaluation']:.0f} s")
            bar.update(job, completed=done)


def _pending(out: Path, row: str, seeds: list[int]) -> list[int]:
    """The row's seeds whose units are to be written, as process 0 finds them (the only one with the run's folder)."""
    return [s for s, due in zip(seeds, agreed(np.isin(seeds, pending_units(out, row, seeds)).astype(np.int32))) if due]
