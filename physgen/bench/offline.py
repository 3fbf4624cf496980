"""The offline policies in the bench: diffusion, flow matching and BC, trained on the expert dataset by the task's
recipe and acting as chunking agents."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from physgen.bench.method import Job, Method
from physgen.bench.protocol import curve_steps, policy_config
from physgen.bench.units import Curves, row_folder
from physgen.control.latency import measure_latency
from physgen.policies import ChunkingAgent, PolicyConfig, load_policy, save_policy, train_policies


def _run(job: Job) -> None:
    config = job.config
    curves, final = {v.row: Curves(job.evaluation, job.seeds) for v in job.variants}, {}
    acting = lambda trained, variant: trained.policy._replace(config=variant.config)  # its evaluation fields

    def at_point(done: int, trained) -> None:
        for variant in job.variants:
            curves[variant.row].add(done, ChunkingAgent(acting(trained, variant)), trained.states,
                                    done == config.optim.steps)
        final["trained"] = trained
        job.advance(config.optim.steps_per_call)

    train_policies(job.task, config, job.train, job.seeds, progress=False, callback=at_point)
    trained = final["trained"]
    for variant in job.variants:
        policy = acting(trained, variant)
        for i, seed in enumerate(job.seeds):
            if seed in variant.pending:
                save_policy(job.out / "checkpoints" / row_folder(variant.row) / f"seed_{seed}", job.task,
                            trained._replace(policy=policy), i)
        job.finish(curves[variant.row], measure_latency(policy, trained.state_of(0), np.asarray(
            job.train.observations), job.task.control_hz), variant)


def _load(path: Path, task: str | None):
    policy, state, _ = load_policy(path, task)
    return ChunkingAgent(policy), state


# what only sampling and acting read: a variant changing only these is evaluated on the same trained policies
EVALUATION_FIELDS = ("exec_steps", "ensemble", "inference_steps", "sampler", "ddim_eta", "integrator")


def offline_method(name: str, generative: bool) -> Method:
    return Method(name, lambda task, budget: policy_config(task, name, budget).as_flat(), _run,
                  work=lambda values: values["steps"], generative=generative,
                  curve_steps=lambda values: curve_steps(PolicyConfig.from_dict(values)), load=_load,
                  configure=PolicyConfig.from_dict, evaluation_fields=EVALUATION_FIELDS)


DIFFUSION, FLOW, BC = offline_method("diffusion", True), offline_method("flow", True), offline_method("bc", False)
