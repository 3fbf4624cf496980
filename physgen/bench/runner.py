"""`physgen bench`: train every method over seeds, evaluate all of them on the same episodes, categorize failures.

Results are stored in units of one (method, seed): `units/<method>/seed_<s>.json` (outcomes, curve) and `.npz`
(states, actions, events, out-of-distribution scores: enough to re-categorize without re-running), each written
atomically, the JSON holding the digest of the arrays. The seeds of a method train together in one compiled program
(vmap over all of them: a seed's numbers depend, in the last bits, on the group it was trained in), so a rerun skips
every method whose units are all written and intact and trains a method with missing or damaged units again as the
same group, writing only those. An interrupted run loses at most the method in progress, and a resumed run ends
with the uninterrupted run's numbers. A lock file keeps a second run out of the same folder.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from rich.progress import Progress

from physgen.bench.failures import categorize, fit_support, nearest_distances
from physgen.control.latency import measure_latency, measure_step_latency
from physgen.bench.protocol import (BUDGETS, METHODS, OFFLINE_METHODS, default_methods, fix_protocol,
                                    make_protocol, policy_config)
from physgen.data import generate_dataset, load_dataset, normalized_score, split_episodes
from physgen.envs import Task, get_task
from physgen.envs.rollout import Episode, rollout_gym
from physgen.errors import DatasetMissing, PhysgenError
from physgen.io import check_folder, file_digest, folder_lock, read_json, write_json, write_npz
from physgen.policies.policy import PolicyConfig
from physgen.seeds import EVALUATION


def expert_dataset(task: Task):
    """The task's expert dataset, generated from its expert first when missing (a fresh machine needs nothing else).
    One that exists but fails its checks is refused, never overwritten: it may be the user's only copy."""
    try:
        return load_dataset(task)
    except DatasetMissing:
        print(f"physgen: generating physgen/{task.name}/expert-v0 from the task's expert (first run only)")
        generate_dataset(task, policy="expert")
        return load_dataset(task)


def unit_path(out: Path, method: str, seed: int) -> Path:
    return out / "units" / method / f"seed_{seed}"


def write_unit(out: Path, method: str, seed: int, record: dict, arrays: dict[str, np.ndarray]) -> None:
    """Arrays first, then the JSON with their digest: a unit counts as done once its JSON exists and matches them."""
    path = unit_path(out, method, seed)
    write_npz(path.with_suffix(".npz"), arrays, compressed=True)
    write_json(path.with_suffix(".json"), {**record, "npz_sha256": file_digest(path.with_suffix(".npz"))})


def read_unit(out: Path, method: str, seed: int) -> dict | None:
    """A finished unit's record; None when it is missing, its JSON is cut short, or its arrays do not match the
    digest in the JSON (a unit to train again)."""
    path = unit_path(out, method, seed)
    record, arrays = read_json(path.with_suffix(".json")), path.with_suffix(".npz")
    if record is None or not arrays.exists() or record.get("npz_sha256") != file_digest(arrays):
        return None
    return record


def pending_units(out: Path, method: str, seeds: list[int]) -> list[int]:
    """The seeds whose units must be (re)written: all of them while the method's latency is missing (it is written
    before the units), else those missing or damaged; a damaged one is named, since it is replaced."""
    if read_json(out / "units" / method / "latency.json") is None:
        return list(seeds)
    pending = [s for s in seeds if read_unit(out, method, s) is None]
    damaged = [str(path) for path in (unit_path(out, method, s) for s in pending) if path.with_suffix(".json").exists()]
    if damaged:
        print(f"physgen: {', '.join(damaged)} damaged or incomplete; training {method} again to rewrite them")
    return pending


class Evaluation:
    """What every unit needs to score its episodes: the task, the dataset's support and reference returns."""

    def __init__(self, task: Task, dataset, support):
        self.task, self.dataset, self.support = task, dataset, support
        self.expert_return = dataset.metadata.get("ref_max_score")

    def record(self, method: str, seed: int, seeds: np.ndarray, obs, actions, events, lengths, returns, success,
               curve: list[dict]) -> tuple[dict, dict]:
        task = self.task
        ood = nearest_distances(self.support, obs)
        normalized = (normalized_score(self.dataset.metadata, returns) if "ref_max_score" in self.dataset.metadata
                      else np.full(len(returns), np.nan))
        low, high = task.action_space.low, task.action_space.high
        episodes = []
        for e, episode_seed in enumerate(seeds):
            n = int(lengths[e])
            category = None if success[e] else categorize(
                actions[e, :n], {k: v[e, :n] for k, v in events.items()}, ood[e, : n + 1], n, task.horizon,
                task.failure_events, low, high, self.support.threshold)
            episodes.append({"episode_seed": int(episode_seed), "return": float(returns[e]),
                             "normalized_return": None if np.isnan(normalized[e]) else float(normalized[e]),
                             "length": n, "success": bool(success[e]), "category": category,
                             "ood_max": float(ood[e, : n + 1].max())})
        record = {"method": method, "seed": seed, "episodes": episodes, "curve": curve,
                  "ood_threshold": self.support.threshold}
        arrays = {"observations": obs, "actions": actions, "lengths": lengths, "ood": ood,
                  **{f"event_{k}": v for k, v in events.items()}}
        return record, arrays


def _run_offline(out: Path, method: str, seeds: list[int], pending: list[int], evaluation: Evaluation, train,
                 protocol: dict, bar: Progress, job) -> None:
    from physgen.policies.evaluate import evaluate
    from physgen.policies.runner import save_policy
    from physgen.policies.train import train_policies

    experiment = protocol["experiment"]
    config = PolicyConfig.from_dict(experiment["hyperparameters"][method])
    all_seeds = np.asarray(experiment["evaluation_seeds"])
    curve_seeds = all_seeds[: experiment["curve_episodes"]]
    curves, final = {s: [] for s in seeds}, {}

    def at_point(done: int, trained) -> None:
        last = done == config.steps
        rollouts = evaluate(evaluation.task, trained.policy, trained.states, all_seeds if last else curve_seeds,
                            expert_return=evaluation.expert_return)
        for i, seed in enumerate(seeds):
            curves[seed].append({"step": done, "success_rate": float(rollouts.success[i].mean()),
                                 "episodes": int(rollouts.success.shape[1])})
        if last:
            final["rollouts"], final["trained"] = rollouts, trained
        bar.advance(job, len(seeds) * config.steps_per_call)

    train_policies(evaluation.task, config, train, seeds, progress=False, callback=at_point)
    rollouts, trained = final["rollouts"], final["trained"]
    write_latency(out, method, measure_latency(trained.policy, trained.state_of(0), np.asarray(train.observations),
                                                evaluation.task.control_hz))
    for i, seed in ((i, seed) for i, seed in enumerate(seeds) if seed in pending):
        save_policy(out / "checkpoints" / method / f"seed_{seed}", evaluation.task, trained, i)
        record, arrays = evaluation.record(
            method, seed, all_seeds, rollouts.observations[i], rollouts.actions[i],
            {k: v[i] for k, v in rollouts.events.items()}, rollouts.lengths[i], rollouts.returns[i],
            rollouts.success[i], curves[seed])
        write_unit(out, method, seed, record, arrays)


def write_latency(out: Path, method: str, latency: dict) -> None:
    """Latency of the method's first seed in this run (machine-dependent, so kept apart from the outcomes); written
    before the method's units, so that a run killed between them resumes with it."""
    write_json(out / "units" / method / "latency.json", latency)


def padded_episodes(task: Task, episodes: list[Episode]):
    """Episodes of different lengths as arrays padded to the horizon with frozen copies (as `evaluate` returns)."""
    n, horizon = len(episodes), task.horizon
    obs = np.zeros((n, horizon + 1, task.obs_dim), np.float32)
    actions = np.zeros((n, horizon, task.act_dim), np.float32)
    events = {k: np.zeros((n, horizon), bool) for k in task.events}
    for e, episode in enumerate(episodes):
        length = episode.length
        obs[e, : length + 1], obs[e, length + 1:] = episode.observations, episode.observations[-1]
        actions[e, :length] = episode.actions
        for k in task.events:
            events[k][e, :length] = episode.events[k]
    return obs, actions, events


def ppo_outcomes(task: Task, policy, episodes: int, expert_return):
    run = rollout_gym(task, policy, EVALUATION, episodes)
    returns = np.array([e.episode_return for e in run])
    lengths = np.array([e.length for e in run])
    success = np.array([task.success(e.events, e.episode_return, e.length, expert_return) for e in run])
    return run, returns, lengths, success


def _run_ppo(out: Path, seeds: list[int], pending: list[int], evaluation: Evaluation, protocol: dict, bar: Progress,
             job) -> None:
    from physgen.policies.ppo import PPOConfig, load_ppo_policy, train_ppo

    experiment, task = protocol["experiment"], evaluation.task
    config = PPOConfig.from_dict(experiment["hyperparameters"]["ppo"])
    folder = out / "checkpoints" / "ppo"
    train_ppo(task, config, seeds, out_dir=folder, progress=False)
    bar.advance(job, len(seeds) * config.total_steps)
    policy = load_ppo_policy(folder / f"seed_{seeds[0]}")
    write_latency(out, "ppo", measure_step_latency(lambda o: policy(o[None]),
                                                   np.asarray(evaluation.dataset.trajectories.observations[:200])))
    intermediate = sorted((folder / "steps").glob("*"), key=lambda p: int(p.name)) if (folder / "steps").exists() else []
    for seed in pending:
        curve = []
        for point in intermediate:
            _, _, _, success = ppo_outcomes(task, load_ppo_policy(point / f"seed_{seed}"),
                                             experiment["curve_episodes"], evaluation.expert_return)
            curve.append({"step": int(point.name), "success_rate": float(success.mean()), "episodes": len(success)})
        write_ppo_unit(out, "ppo", folder, seed, evaluation, experiment["episodes"], config.total_steps, curve)


def write_ppo_unit(out: Path, method: str, folder: Path, seed: int, evaluation: Evaluation, episodes: int,
                   final_step: int, curve: list[dict]) -> None:
    """Evaluate the PPO-style checkpoint `folder/seed_<seed>` on the bench's episodes and write its unit, the
    final evaluation appended to `curve` at `final_step`."""
    from physgen.policies.ppo import load_ppo_policy

    task = evaluation.task
    run, returns, lengths, success = ppo_outcomes(task, load_ppo_policy(folder / f"seed_{seed}"), episodes,
                                                  evaluation.expert_return)
    curve = [*curve, {"step": final_step, "success_rate": float(success.mean()), "episodes": len(success)}]
    obs, actions, events = padded_episodes(task, run)
    record, arrays = evaluation.record(method, seed, np.array([e.seed for e in run]), obs, actions, events,
                                       lengths, returns, success, curve)
    write_unit(out, method, seed, record, arrays)


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
    from physgen.bench.report import write_results_and_report

    started = time.perf_counter()
    task = get_task(task_name)
    methods, seeds, episodes, note = _resolve(task, methods, seeds, episodes, budget)
    out = check_folder(Path(out if out is not None else Path("runs") / "bench" / task.name).absolute(), "--out")
    dataset = expert_dataset(task)
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
    evaluation = Evaluation(task, dataset, fit_support(train.observations, validation.observations, seed=0))
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
                from physgen.bench import world

                {"rssm-mpc": world.run_rssm_mpc, "ppo-wm": world.run_ppo_wm}[method](
                    out, seeds, pending, evaluation, protocol)
                bar.advance(job, work[method] * len(seeds))
