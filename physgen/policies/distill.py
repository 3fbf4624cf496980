"""One-step students: a trained diffusion or flow policy distilled into a flow policy that samples in one call.

Knowledge distillation of a deterministic sampler (Luhman & Luhman 2021): the teacher's sampler, a flow ODE or DDIM
at eta = 0, is a deterministic map from the initial noise x0 to a chunk. The student, a flow policy with one Euler
step (`x0 + v(x0, 0, cond)`) and the teacher's chunking, network and normalizers, learns that map by regression:

    loss = mean || x0 + v_student(x0, 0, cond) - teacher(x0, cond) ||^2,   x0 ~ N(0, I) fresh at every step

over windows of the teacher's training data, the teacher's chunk computed inside the compiled step. The noise, not
the network, picks the mode, so the student keeps the teacher's modes where a regressor of the mean (BC) averages
them. Its checkpoint is an ordinary flow checkpoint whose meta says what it was distilled from.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from physgen.configs import Optimisation, Parts, check
from physgen.data import Normalizer, Trajectories, load_dataset, split_episodes
from physgen.envs import Task, get_task
from physgen.errors import PhysgenError
from physgen.policies import diffusion, flow
from physgen.policies.policy import Policy, PolicyConfig, observation_normalizer
from physgen.policies.runner import load_policy, save_policy
from physgen.policies.train import TrainedPolicies, train_policies

STARTS = ("teacher", "scratch")


@dataclass(frozen=True)
class DistillConfig(Parts):
    """The student's training: gradient steps and optimiser, EMA, and where its weights start (`teacher`: the
    teacher's EMA weights, `scratch`: fresh ones). The learning rate and the start were chosen by measurement on
    fork's quick recipe (the student's error against the teacher and its success), for flow and DDIM teachers."""

    optim: Optimisation = Optimisation(steps=2_000, batch_size=256, learning_rate=1e-3, weight_decay=1e-6,
                                       warmup_steps=100, grad_clip=1.0, steps_per_call=500)
    ema_decay: float = 0.999
    start: str = "teacher"

    def __post_init__(self):
        check(self, {"start": STARTS})

    @classmethod
    def for_teacher(cls, teacher: PolicyConfig, calls: int = 1) -> "DistillConfig":
        """The defaults with the teacher's gradient steps and batch, in `calls` compiled calls (curve points)."""
        steps = teacher.optim.steps
        return cls().replace(steps=steps, batch_size=teacher.optim.batch_size, steps_per_call=-(-steps // calls))


def teacher_sampler(config: PolicyConfig) -> Callable:
    """`sample(net, x0, cond)`: the teacher's chunk from initial noise x0 by its own sampler and steps; refused
    (PhysgenError) when that sampler draws fresh noise along the way and so is no function of x0."""
    steps = config.inference_steps
    if config.method == "flow":
        return lambda net, x0, cond: flow.integrate(net, x0, cond, steps, config.flow.integrator,
                                                    target=config.flow.target)
    if config.method == "bc":
        raise PhysgenError("a bc policy samples nothing (it regresses the mean chunk), so there is no sampler to "
                           "distil; distil a flow or diffusion checkpoint")
    d = config.diffusion
    if d.sampler != "ddim" or d.ddim_eta != 0.0:
        sampler = "ddpm" if d.sampler == "ddpm" else f"ddim at eta {d.ddim_eta:g}"
        raise PhysgenError(f"a diffusion teacher sampling by {sampler} draws fresh noise at every step, so its chunk "
                           "is no function of its initial noise and cannot be distilled; distil a diffusion policy "
                           "sampled by DDIM at eta 0 (sampler=ddim, ddim_eta=0 in its config), or a flow one")
    schedule = diffusion.make_schedule(d.schedule, d.train_diffusion_steps)
    return lambda net, x0, cond: diffusion.sample_from_noise(net, schedule, d.prediction, cond, x0, None, steps)


def student_config(teacher: PolicyConfig, distill: DistillConfig) -> PolicyConfig:
    """The teacher's config as a one-step Euler flow policy trained by `distill`."""
    return dataclasses.replace(teacher.replace(method="flow", inference_steps=1, integrator="euler",
                                               ema_decay=distill.ema_decay), optim=distill.optim)


def distillation_loss(student: Policy, teacher: Policy) -> Callable:
    """`loss(params, teacher_params, batch, key)`: the student's one Euler step against the teacher's sample from
    the same fresh noise, mean squared error over the normalized chunk."""
    sample = teacher_sampler(teacher.config)

    def loss(params, teacher_params, batch, key):
        x0 = jax.random.normal(key, batch.actions.shape)
        teacher_net, teacher_cond = teacher.conditioning(teacher_params, batch.observations)
        net, cond = student.conditioning(params, batch.observations)
        chunk = jax.lax.stop_gradient(sample(teacher_net, x0, teacher_cond))
        one_step = flow.integrate(net, x0, cond, 1, "euler", target=student.config.flow.target)
        return jnp.mean((one_step - chunk) ** 2)

    return loss


def _check_normalizers(teacher: TrainedPolicies, data: Trajectories) -> None:
    """The student fits its normalizers on `data`; they must be the teacher's, or the two would not share a space."""
    fitted = observation_normalizer(teacher.policy.config, data.observations), Normalizer.fit(data.actions)
    for mine, theirs in zip(fitted, (teacher.states.obs_norm, teacher.states.act_norm)):
        if not all(np.allclose(np.asarray(a)[None], np.asarray(b), rtol=1e-6, atol=1e-6) for a, b in zip(mine, theirs)):
            raise PhysgenError("the distillation data is not the data the teacher was trained on (their normalizers "
                               "differ); pass the teacher's training split (the dataset it was trained on, split with "
                               "validation_fraction 0.1 and seed 0)")


def distill_policies(task: Task, teacher: TrainedPolicies, data: Trajectories, distill: DistillConfig = DistillConfig(),
                     progress: bool = True, callback=None, devices: int | str | None = None) -> TrainedPolicies:
    """One-step students of every seed of `teacher` (vmapped over its seeds, each student seeded as its teacher),
    trained on `data`, the teacher's training split, spread over `devices` as `train_policies` does.
    `callback(step, trained)` runs after every call."""
    teacher_sampler(teacher.policy.config)  # refuses a stochastic teacher before any work
    _check_normalizers(teacher, data)
    config = student_config(teacher.policy.config, distill)
    student = teacher.policy._replace(config=config)
    return train_policies(task, config, data, list(teacher.seeds), progress, callback,
                          start=teacher.states.params if distill.start == "teacher" else None,
                          teacher=teacher.states.params, loss=distillation_loss(student, teacher.policy),
                          devices=devices)


def distilled_from(teacher: PolicyConfig, distill: DistillConfig, checkpoint: str | None = None) -> dict:
    """The note a student's checkpoint carries (meta `distilled_from`): its teacher and its distillation."""
    return {"checkpoint": checkpoint, "teacher": teacher.as_flat(), "distillation": distill.as_flat()}


def distill_checkpoint(path: str | Path, out: str | Path, steps: int | None = None, dataset: str = "expert-v0",
                       progress: bool = True) -> tuple[Path, TrainedPolicies]:
    """Distil the policy checkpoint at `path` on its task's dataset `dataset` (its training split, as `physgen
    train` made it) for `steps` gradient steps (default: as many as the teacher's, `DistillConfig.for_teacher`);
    write the student's checkpoint to `out` and return its path and the student."""
    if steps is not None and steps < 1:
        raise PhysgenError(f"--steps must be at least 1, got {steps}")
    if Path(out).absolute() == Path(path).absolute():  # the student's checkpoint would replace its teacher's
        raise PhysgenError(f"--out {out} is the teacher's own checkpoint folder; pass another, or leave --out out "
                           "for the teacher's folder with -1step appended")
    policy, state, meta = load_policy(path)
    teacher_sampler(policy.config)  # refuses a stochastic teacher before the data is read
    teacher = policy.config.replace(steps=steps) if steps else policy.config
    distill = DistillConfig.for_teacher(teacher, calls=-(-teacher.optim.steps // DistillConfig().optim.steps_per_call))
    task = get_task(meta["task"])
    train, _ = split_episodes(load_dataset(task, dataset).trajectories, validation_fraction=0.1, seed=0)
    stacked = jax.tree.map(lambda x: x[None], state)
    teacher = TrainedPolicies(policy, stacked, stacked.params, np.zeros((1, 0)), (meta["seed"],))
    student = distill_policies(task, teacher, train, distill, progress)
    note = distilled_from(policy.config, distill, str(Path(path).absolute()))
    return save_policy(out, task, student, 0, distilled_from=note), student
