"""The units of a benchmark run, one per (method, seed): `units/<method>/seed_<s>.json` (outcomes, curve) and `.npz`
(observations, actions, events, out-of-distribution scores, and an image task's states behind its frames: enough
to re-categorize without re-running), each written atomically, the JSON holding the digest of the arrays; and what
every method's evaluation writes into them."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from physgen.bench.failures import Trajectory, diagnose, nearest_distances
from physgen.data import normalized_score
from physgen.envs import Task
from physgen.envs.rollout import Agent, Rollouts, run_episodes
from physgen.io import file_digest, read_json, write_json, write_npz


def row_folder(row: str) -> str:
    """A row's folder name, brackets made parentheses: `flow(exec_steps=2)` for `flow[exec_steps=2]` (TensorStore,
    under the checkpoints, takes brackets in a path for a pattern)."""
    return row.translate(str.maketrans("[]", "()"))


def unit_path(out: Path, row: str, seed: int) -> Path:
    return out / "units" / row_folder(row) / f"seed_{seed}"


def latency_path(out: Path, row: str) -> Path:
    return out / "units" / row_folder(row) / "latency.json"


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
    if read_json(latency_path(out, method)) is None:
        return list(seeds)
    pending = [s for s in seeds if read_unit(out, method, s) is None]
    damaged = [str(path) for path in (unit_path(out, method, s) for s in pending) if path.with_suffix(".json").exists()]
    if damaged:
        print(f"physgen: {', '.join(damaged)} damaged or incomplete; training {method} again to rewrite them")
    return pending


class Evaluation:
    """What every unit needs to score its episodes: the task, the dataset's support and reference returns, the
    protocol's evaluation episodes (all of them at the final point, the first `curve_episodes` before it), and the
    devices the run's seeds are spread over (`physgen.devices.seed_mesh`), in training as in evaluation."""

    def __init__(self, task: Task, dataset, support, experiment: dict, devices: int = 1):
        self.task, self.dataset, self.support, self.devices = task, dataset, support, devices
        self.expert_return = dataset.metadata.get("ref_max_score")
        self.episode_seeds = np.asarray(experiment["evaluation_seeds"])
        self.curve_seeds = self.episode_seeds[: experiment["curve_episodes"]]
        self.seconds = 0.0  # spent in `run`, so that a run's report can tell training and evaluation time apart

    def run(self, agent: Agent, params, final: bool) -> Rollouts:
        """Every seed's agent on the final or the curve episodes."""
        started = time.perf_counter()
        seeds = self.episode_seeds if final else self.curve_seeds
        rollouts = run_episodes(self.task, agent, params, seeds, self.expert_return, self.devices)
        self.seconds += time.perf_counter() - started
        return rollouts

    def record(self, method: str, seed: int, rollouts: Rollouts, i: int, curve: list[dict]) -> tuple[dict, dict]:
        """The unit of row `i` (seed `seed`) of the final rollouts."""
        task = self.task
        obs, actions, lengths, returns, success = (rollouts.observations[i], rollouts.actions[i],
                                                   rollouts.lengths[i], rollouts.returns[i], rollouts.success[i])
        events = {k: v[i] for k, v in rollouts.events.items()}
        ood = nearest_distances(self.support, obs)
        replayed = task.detector_observations
        states = obs if replayed is None else np.asarray(replayed(self.episode_seeds, actions))
        normalized = (normalized_score(self.dataset.metadata, returns) if "ref_max_score" in self.dataset.metadata
                      else np.full(len(returns), np.nan))
        episodes = []
        for e, episode_seed in enumerate(self.episode_seeds):
            n = int(lengths[e])
            diagnosis = None if success[e] else diagnose(
                task, Trajectory(states[e], actions[e], {k: v[e] for k, v in events.items()}, ood[e], n),
                self.support.threshold)
            episodes.append({"episode_seed": int(episode_seed), "return": float(returns[e]),
                             "normalized_return": None if np.isnan(normalized[e]) else float(normalized[e]),
                             "length": n, "success": bool(success[e]),
                             "category": diagnosis and diagnosis.category,
                             "evidence": diagnosis and diagnosis.evidence,
                             "ood_max": float(ood[e, : n + 1].max())})
        record = {"method": method, "seed": seed, "episodes": episodes, "curve": curve,
                  "ood_threshold": self.support.threshold}
        arrays = {"observations": obs, "actions": actions, "lengths": lengths, "ood": ood,
                  **{f"event_{k}": v for k, v in events.items()}, **({} if replayed is None else {"states": states})}
        return record, arrays


class Curves:
    """Success over training of a group of seeds trained together, and the rollouts of its final point."""

    def __init__(self, evaluation: Evaluation, seeds: list[int]):
        self.evaluation, self.seeds = evaluation, seeds
        self.points: dict[int, list[dict]] = {s: [] for s in seeds}
        self.final: Rollouts | None = None

    def add(self, step: int, agent: Agent, params, final: bool) -> None:
        """Evaluate every seed's agent at training step `step` (on all the episodes when `final`)."""
        rollouts = self.evaluation.run(agent, params, final)
        for i, seed in enumerate(self.seeds):
            self.points[seed].append({"step": step, "success_rate": float(rollouts.success[i].mean()),
                                      "episodes": int(rollouts.success.shape[1]),
                                      "returns": [float(r) for r in rollouts.returns[i]]})
        if final:
            self.final = rollouts

    def write_units(self, out: Path, method: str, pending: list[int]) -> None:
        """The units of the `pending` seeds, from the final rollouts: arrays first, then the JSON with their digest (a
        unit counts as done once its JSON exists and matches them)."""
        for i, seed in enumerate(self.seeds):
            if seed in pending:
                record, arrays = self.evaluation.record(method, seed, self.final, i, self.points[seed])
                path = unit_path(out, method, seed).with_suffix(".npz")
                write_npz(path, arrays, compressed=True)
                write_json(path.with_suffix(".json"), {**record, "npz_sha256": file_digest(path)})
