"""The offline policies in the bench: diffusion, flow matching and BC, trained on the expert dataset by the task's
recipe and acting as chunking agents; and `flow-1step` (opt-in), the task's flow policy distilled into a one-step
student (`physgen.policies.distill`)."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from physgen.bench.method import Job, Method
from physgen.bench.protocol import BUDGETS, curve_steps, policy_config
from physgen.bench.units import Curves, row_folder
from physgen.control.latency import measure_latency
from physgen.devices import everywhere
from physgen.policies import (ChunkingAgent, PolicyConfig, TrainedPolicies, load_policy, save_policy,
                             train_policies)
from physgen.policies.distill import DistillConfig, distill_policies, distilled_from, student_config


def _evaluate_and_save(job: Job, train, optim, acting, note=None) -> None:
    """`train(callback)` the job's policies (`optim`: its steps and calls); evaluate every variant's agent
    (`acting(trained, variant)`: its policy) at each curve point; save its checkpoints (meta `distilled_from`:
    `note(variant)`, where given) and write its latency and units."""
    curves, final = {v.row: Curves(job.evaluation, job.seeds) for v in job.variants}, {}

    def at_point(done: int, trained) -> None:
        for variant in job.variants:
            curves[variant.row].add(done, ChunkingAgent(acting(trained, variant)), trained.states, done == optim.steps)
        final["trained"] = trained
        job.advance(optim.steps_per_call)

    train(at_point)
    trained = final["trained"]
    for variant in job.variants:
        policy = acting(trained, variant)
        for i, seed in enumerate(job.seeds):
            if seed in variant.pending:
                save_policy(job.out / "checkpoints" / row_folder(variant.row) / f"seed_{seed}", job.task,
                            trained._replace(policy=policy), i, note(variant) if note else None)
        job.finish(curves[variant.row], measure_latency(policy, trained.state_of(0), np.asarray(
            job.train.observations), job.task.control_hz), variant)


def _run(job: Job) -> None:
    config = job.config
    _evaluate_and_save(job, lambda callback: train_policies(job.task, config, job.train, job.seeds, progress=False,
                                                            callback=callback, devices=job.evaluation.devices),
                       config.optim, lambda trained, variant: trained.policy._replace(config=variant.config))


def _flow_row_teachers(job: Job, config: PolicyConfig) -> TrainedPolicies | None:
    """The `flow` row's final policies of this run, where it wrote every seed's with the teacher's config: the
    teacher this method would train (the same recipe, seeds and data), without training it again."""
    paths = [job.out / "checkpoints" / "flow" / f"seed_{seed}" for seed in job.seeds]
    if not everywhere(all(path.is_dir() for path in paths)):
        return None
    loaded = [load_policy(path, job.task.name) for path in paths]
    if any(policy.config != config for policy, _, _ in loaded):
        return None
    states = jax.tree.map(lambda *leaves: jnp.stack(leaves), *(state for _, state, _ in loaded))
    return TrainedPolicies(loaded[0][0], states, states.params, np.zeros((len(paths), 0)), tuple(job.seeds))


def _run_one_step(job: Job) -> None:
    """The flow teacher by the task's recipe (the `flow` row's, where this run has it), then its one-step students,
    both vmapped over the seeds."""
    teacher_config, distill = job.config
    teacher = _flow_row_teachers(job, teacher_config)
    if teacher is None:
        teacher = train_policies(job.task, teacher_config, job.train, job.seeds, progress=False,
                                 callback=lambda done, trained: job.advance(teacher_config.optim.steps_per_call),
                                 devices=job.evaluation.devices)
    else:
        job.advance(teacher_config.optim.steps)
    _evaluate_and_save(job, lambda callback: distill_policies(job.task, teacher, job.train, distill, progress=False,
                                                              callback=callback, devices=job.evaluation.devices),
                       distill.optim, lambda trained, variant: trained.policy._replace(
                           config=student_config(*variant.config)),
                       note=lambda variant: distilled_from(*variant.config))


def _load(path: Path, task: str | None):
    policy, state, _ = load_policy(path, task)
    return ChunkingAgent(policy), state


# what only sampling and acting read: a variant changing only these is evaluated on the same trained policies
EVALUATION_FIELDS = ("exec_steps", "ensemble", "delay", "rtc", "inference_steps", "sampler", "ddim_eta", "integrator",
                     "weights")


def offline_method(name: str, generative: bool) -> Method:
    return Method(name, lambda task, budget: policy_config(task, name, budget).as_flat(), _run,
                  work=lambda values: values["steps"], generative=generative, frames=True,
                  curve_steps=lambda values: curve_steps(PolicyConfig.from_dict(values)), load=_load,
                  configure=PolicyConfig.from_dict, evaluation_fields=EVALUATION_FIELDS)


def one_step_hyperparameters(task, budget: str) -> dict:
    """The task's flow recipe for the teacher; distillation for as many steps as the teacher trained, with its batch,
    evaluated at the budget's curve points."""
    teacher = policy_config(task, "flow", budget)
    distill = DistillConfig.for_teacher(teacher, BUDGETS[budget].curve_points)
    return {"teacher": teacher.as_flat(), "distill": distill.as_flat()}


DIFFUSION, FLOW, BC = offline_method("diffusion", True), offline_method("flow", True), offline_method("bc", False)
# opt-in: the default runs (hopper's main job) keep their methods and time. Its checkpoints are flow checkpoints,
# loaded by the flow method's `load`; its variants train apart (the parts nest the evaluation fields).
FLOW_1STEP = Method("flow-1step", one_step_hyperparameters, _run_one_step,
                    work=lambda values: values["teacher"]["steps"] + values["distill"]["steps"], generative=True,
                    default=False, frames=True, curve_axis="distillation steps",
                    curve_steps=lambda values: curve_steps(DistillConfig.from_dict(values["distill"])),
                    configure=lambda values: (PolicyConfig.from_dict(values["teacher"]),
                                              DistillConfig.from_dict(values["distill"])))
