"""PPO in the bench: trained in the task itself, evaluated in memory at its checkpoints as a Gaussian agent."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np

from physgen.bench.method import Job, Method
from physgen.bench.protocol import BUDGETS
from physgen.bench.units import Curves, row_folder
from physgen.control.latency import measure_agent_latency
from physgen.policies.ppo import GaussianAgent, PPOConfig, agent_params, load_ppo, train_ppo


def _run(job: Job) -> None:
    config = job.config
    agent, curves, final = GaussianAgent.for_task(job.task, config), Curves(job.evaluation, job.seeds), {}
    total = config.num_updates * config.steps_per_update

    def at_point(env_steps: int, learners) -> None:
        final["params"] = params = agent_params(learners)
        curves.add(env_steps, agent, params, env_steps == total)

    train_ppo(job.task, config, job.seeds, out_dir=job.out / "checkpoints" / row_folder(job.variants[0].row),
              progress=False, callback=at_point, devices=job.evaluation.devices)
    first = jax.tree.map(lambda x: x[0], final["params"])
    observations = np.asarray(job.evaluation.dataset.trajectories.observations[:200])
    job.finish(curves, measure_agent_latency(agent, first, observations))


def load_gaussian_agent(path: Path, task: str | None):
    """(agent, parameters) of a PPO checkpoint (ppo's or ppo-wm's)."""
    task_obj, config, params, normalizer, _ = load_ppo(path, task)
    return GaussianAgent.for_task(task_obj, config), (params, normalizer)


def _hyperparameters(task, budget: str) -> dict:
    steps, points = BUDGETS[budget].ppo_steps, BUDGETS[budget].curve_points
    return dataclasses.asdict(PPOConfig(total_steps=steps, checkpoint_every=-(-steps // points)))


PPO = Method("ppo", _hyperparameters, _run,
             work=lambda values: values["total_steps"], online=True, curve_axis="real environment steps",
             load=load_gaussian_agent, configure=lambda values: PPOConfig.from_dict(values).validate())
