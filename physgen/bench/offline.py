"""The offline policies in the bench: diffusion, flow matching and BC, trained on the expert dataset by the task's
recipe and acting as chunking agents."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from physgen.bench.method import Job, Method
from physgen.bench.protocol import curve_steps, policy_config
from physgen.bench.units import Curves
from physgen.control.latency import measure_latency
from physgen.policies import ChunkingAgent, PolicyConfig, load_policy, save_policy, train_policies


def _run(job: Job) -> None:
    config = job.config
    curves, final = Curves(job.evaluation, job.seeds), {}

    def at_point(done: int, trained) -> None:
        curves.add(done, ChunkingAgent(trained.policy), trained.states, done == config.optim.steps)
        final["trained"] = trained
        job.advance(config.optim.steps_per_call)

    train_policies(job.task, config, job.train, job.seeds, progress=False, callback=at_point)
    trained = final["trained"]
    for i, seed in enumerate(job.seeds):
        if seed in job.pending:
            save_policy(job.out / "checkpoints" / config.method / f"seed_{seed}", job.task, trained, i)
    job.finish(config.method, curves, measure_latency(trained.policy, trained.state_of(0),
                                                      np.asarray(job.train.observations), job.task.control_hz))


def _load(path: Path, task: str | None):
    policy, state, _ = load_policy(path, task)
    return ChunkingAgent(policy), state


def offline_method(name: str, generative: bool) -> Method:
    return Method(name, lambda task, budget: policy_config(task, name, budget).as_flat(), _run,
                  work=lambda values: values["steps"], generative=generative,
                  curve_steps=lambda values: curve_steps(PolicyConfig.from_dict(values)), load=_load,
                  configure=PolicyConfig.from_dict)


DIFFUSION, FLOW, BC = offline_method("diffusion", True), offline_method("flow", True), offline_method("bc", False)
