"""The protocol of a benchmark run, fixed and written before anything trains: seeds, episodes, every hyperparameter,
the checkpoint rule, package versions, commit and machine. A rerun into the same folder must match it."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import jax

from physgen.envs import Task
from physgen.envs.rollout import episode_seeds
from physgen.errors import PhysgenError
from physgen.io import write_json
from physgen.policies.policy import PolicyConfig

OFFLINE_METHODS = ("diffusion", "flow", "bc")
WORLD_MODEL_METHODS = ("rssm-mpc", "ppo-wm")
ONLINE_METHODS = ("ppo", *WORLD_MODEL_METHODS)  # joined to the defaults as the budget allows
METHODS = (*OFFLINE_METHODS, *ONLINE_METHODS)
GENERATIVE_METHODS = ("diffusion", "flow", *WORLD_MODEL_METHODS)  # compared against the others (BC, PPO)
EVAL_SEED = 1_000_000
STATS = {"confidence": 0.95, "resamples": 10_000, "bootstrap_seed": 0}
CHECKPOINT_RULE = "the final EMA weights of every seed (no selection over checkpoints or seeds)"
PACKAGES = ("physgen", "jax", "jaxlib", "flax", "optax", "gymnasium", "minari", "mujoco", "numpy", "scipy")


@dataclass(frozen=True)
class Budget:
    """How much a run trains and evaluates. PPO joins the default methods when `ppo_steps` is set for the task."""

    steps: int  # gradient steps per seed of the offline methods
    batch_size: int
    hidden: int
    episodes: int  # final evaluation episodes per seed
    curve_points: int  # evaluations over training, the last one the final evaluation
    curve_episodes: int  # episodes per seed at the earlier points (pure-JAX tasks, where they are cheap: all)
    seeds: int
    ppo_steps: int  # environment steps per PPO seed
    rssm_steps: int  # gradient steps per RSSM seed (rssm-mpc and ppo-wm share the models). On fork, MPC over
    # RSSMs of 2,000 steps succeeded in 0 of 100 episodes (10 seeds), of 5,000 steps in 0.48-0.58 and of 10,000
    # steps in 0.90 (3 seeds, 30 episodes; README, "World models")
    dream_steps: int  # imagined environment steps per ppo-wm seed
    ppo_by_default: str  # PPO and the world-model methods: "never", "pure-jax" (tasks that train in one compiled
    # program) or "always"


BUDGETS = {
    "smoke": Budget(steps=100, batch_size=64, hidden=64, episodes=4, curve_points=5, curve_episodes=2, seeds=2,
                    ppo_steps=20_000, rssm_steps=100, dream_steps=4_096, ppo_by_default="never"),
    "quick": Budget(steps=2_000, batch_size=128, hidden=256, episodes=10, curve_points=5, curve_episodes=2, seeds=10,
                    ppo_steps=200_000, rssm_steps=10_000, dream_steps=200_704, ppo_by_default="pure-jax"),
    "full": Budget(steps=10_000, batch_size=256, hidden=256, episodes=100, curve_points=10, curve_episodes=20,
                   seeds=10, ppo_steps=1_000_000, rssm_steps=10_000, dream_steps=999_424, ppo_by_default="always"),
}


def default_methods(task: Task, budget: Budget) -> tuple[list[str], str | None]:
    """The methods a run uses when none are named, and why PPO is left out (None when it is in)."""
    if budget.ppo_by_default == "always" or (budget.ppo_by_default == "pure-jax" and task.functional is not None):
        return list(METHODS), None
    return list(OFFLINE_METHODS), (f"PPO and the world-model methods are left out on this budget: "
                                   f"{budget.ppo_steps:,} environment steps per PPO seed on {task.name} do not fit "
                                   "it; add them with --methods ...,ppo,rssm-mpc,ppo-wm or --budget full")


# Per-task changes to PolicyConfig's defaults. hopper: shorter chunks, from a one-seed sweep at 3,000 steps (README,
# "Benchmark"): diffusion returned 45% of the expert with T_p 16 / T_a 8, 57% with T_p 4 / T_a 2; BC 44% with
# 16 / 8 and 65% with 8 / 4.
TASK_POLICY_SETTINGS = {"hopper": {"action_steps": 8, "exec_steps": 4}}


def policy_config(task: Task, method: str, budget: Budget) -> PolicyConfig:
    return PolicyConfig(method=method, steps=budget.steps, batch_size=budget.batch_size, hidden=budget.hidden,
                        steps_per_call=-(-budget.steps // budget.curve_points),
                        **TASK_POLICY_SETTINGS.get(task.name, {}))


def curve_steps(config: PolicyConfig) -> list[int]:
    calls = -(-config.steps // config.steps_per_call)
    return [min((i + 1) * config.steps_per_call, config.steps) for i in range(calls)]


def _git_commit() -> str:
    """The commit of the source tree physgen runs from, read from .git (no subprocess: JAX is multithreaded)."""
    git = Path(__file__).resolve().parents[2] / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        if (git / ref).exists():
            return (git / ref).read_text().strip()
        packed = [line.split() for line in (git / "packed-refs").read_text().splitlines() if line.endswith(ref)]
        return packed[0][0] if packed else "unknown"
    except OSError:
        return "unknown"


def _versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def make_protocol(task: Task, methods: list[str], seeds: list[int], budget_name: str, episodes: int, dataset,
                  note: str | None) -> dict:
    from physgen.bench import world
    from physgen.policies.ppo import PPOConfig

    budget = BUDGETS[budget_name]
    evaluation = episode_seeds(EVAL_SEED, episodes)
    dataset_seeds = set(episode_seeds(int(dataset.metadata.get("physgen_seed", 0)),
                                      dataset.trajectories.num_episodes).tolist())
    if dataset_seeds & set(evaluation.tolist()):
        raise PhysgenError("evaluation episode seeds overlap the dataset's; regenerate the dataset with another --seed")
    hyper = {m: dataclasses.asdict(policy_config(task, m, budget)) for m in methods if m in OFFLINE_METHODS}
    if "ppo" in methods:
        hyper["ppo"] = dataclasses.asdict(PPOConfig(total_steps=budget.ppo_steps))
    hyper.update({m: world.hyperparameters(m, budget) for m in methods if m in WORLD_MODEL_METHODS})
    return {
        "experiment": {
            "task": task.name, "methods": methods, "training_seeds": seeds, "budget": budget_name,
            "budget_settings": dataclasses.asdict(budget), "episodes": episodes,
            "evaluation_seeds": evaluation.tolist(), "curve_episodes": episodes if task.functional is not None else min(budget.curve_episodes, episodes),
            "curve_steps": {m: curve_steps(policy_config(task, m, budget)) for m in methods if m in OFFLINE_METHODS},
            "checkpoint_rule": CHECKPOINT_RULE, "hyperparameters": hyper,
            "dataset": {"id": dataset.dataset_id, "episodes": dataset.trajectories.num_episodes,
                        "validation_fraction": 0.1, "split_seed": 0,
                        **{k: dataset.metadata[k] for k in ("ref_min_score", "ref_max_score") if k in dataset.metadata}},
            "statistics": STATS, "failure_rules": "physgen.bench.failures (rules in its docstring)",
            "ppo_left_out": note,
            "world_model_datasets": (world.world_model_datasets(task)
                                     if set(methods) & set(WORLD_MODEL_METHODS) else None),
        },
        "environment": {"packages": _versions(), "git_commit": _git_commit(), "python": platform.python_version(),
                        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
                        "jax_devices": [str(d) for d in jax.devices()]},
    }


def fix_protocol(out: Path, protocol: dict) -> None:
    """Write `protocol.json`, or check that the one already in `out` describes the same experiment."""
    path = out / "protocol.json"
    if path.exists():
        existing = json.loads(path.read_text())
        if existing.get("experiment") != json.loads(json.dumps(protocol["experiment"])):
            raise PhysgenError(f"{out} holds a run with a different protocol (task, methods, seeds, budget or "
                               "hyperparameters); pass another --out, or delete that folder to start over")
        return
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, protocol)
