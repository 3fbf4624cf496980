"""The world-model methods of `physgen bench`: `rssm-mpc` (planning in an RSSM) and `ppo-wm` (PPO trained inside
it), with the RSSM's own open-loop evaluation.

Both use the same RSSMs: one per training seed, trained together on the training splits of the task's world-model
datasets (the expert's, plus data that also shows failures: a noisy expert on the pure-JAX tasks, the medium
policy on hopper) and checkpointed under `checkpoints/rssm/`, so the second method reuses the first one's models.
Their units, curves, failure categories, latency and videos are those of every other method.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from physgen.bench.method import Job, Method, Variant
from physgen.bench.protocol import BUDGETS, Budget
from physgen.bench.units import Curves, row_folder
from physgen.control.latency import measure_agent_latency
from physgen.data import ensure_dataset, split_episodes
from physgen.envs import Task
from physgen.io import read_json, write_json
from physgen.policies.ppo import (GaussianAgent, PPOConfig, agent_params, learner_of, load_ppo, load_ppo_policy,
                                 save_ppo)
from physgen.world_models.data import concat_trajectories, frames_from, generate_noisy_dataset
from physgen.world_models.dream import DreamConfig, train_ppo_in_models
from physgen.world_models.evaluate import open_loop_errors, plot_open_loop
from physgen.world_models.mpc import MPC, MPCConfig
from physgen.world_models.rssm import RSSMConfig
from physgen.world_models.train import load_world_model, save_world_model, train_world_models


def world_model_datasets(task: Task) -> list[str]:
    """The datasets the RSSMs learn from: the task's standard ones, and a noisy expert's on pure-JAX tasks (an
    expert that never fails shows a model nothing of failure)."""
    names = [f"{name}-v0" for name in task.datasets]
    return names + (["noisy-v0"] if task.functional is not None else [])


def hyperparameters(method: str, budget: Budget) -> dict:
    rssm = RSSMConfig.of(steps=budget.rssm_steps, steps_per_call=-(-budget.rssm_steps // budget.curve_points),
                         learning_rate=budget.rssm_learning_rate).as_flat()
    if method == "rssm-mpc":
        return {"rssm": rssm, "mpc": dataclasses.asdict(MPCConfig())}
    ppo = PPOConfig(total_steps=budget.dream_steps, num_envs=16, rollout_steps=128, eval_episodes=0,
                    checkpoint_every=0)
    return {"rssm": rssm, "ppo": dataclasses.asdict(ppo), "dream": dataclasses.asdict(DreamConfig())}


def _splits(task: Task):
    """Train and held-out splits of the world-model datasets, generating the missing ones (never a broken one)."""
    noisy = lambda: generate_noisy_dataset(task, episodes=task.dataset_episodes, seed=1)
    datasets = [ensure_dataset(task, name, noisy if name == "noisy-v0" else None, load_ppo_policy)
                for name in world_model_datasets(task)]
    parts = [split_episodes(dataset.trajectories, validation_fraction=0.1, seed=0) for dataset in datasets]
    return tuple(concat_trajectories([split[i] for split in parts]) for i in (0, 1))


def rssm_tag(variant: Variant) -> str:
    """The suffix of the folders of a variant's RSSMs: its varied RSSM fields in parentheses ("" when none vary)."""
    rssm = variant.hyperparameters["rssm"]
    varied = [f"{name}={value}" for name, value in variant.varied.items()
              if name.rpartition(".")[0] in ("", "rssm") and name.rpartition(".")[2] in rssm]
    return f"({','.join(varied)})" if varied else ""


def world_models(out: Path, task: Task, config: RSSMConfig, seeds: list[int], callback=None, tag: str = ""):
    """(model, params stacked over seeds, train split, held-out split). Without `callback` the models are loaded
    from `checkpoints/rssm<tag>/` when every seed is there; otherwise they are trained as one group (calling
    `callback(done, model, params)` during training; training is seeded, so a retrained group is the same) and
    saved. The open-loop evaluation is written to `world_model<tag>/` whenever it is missing."""
    train, test = _splits(task)
    folder = out / "checkpoints" / f"rssm{tag}"
    if callback is None and all((folder / f"seed_{s}").exists() for s in seeds):  # protocol check: same config
        loaded = [load_world_model(folder / f"seed_{s}", task.name) for s in seeds]
        model, params = loaded[0][0], jax.tree.map(lambda *x: jnp.stack(x), *[p for _, p, _ in loaded])
        seconds = loaded[0][2]["training_seconds"]
    else:
        trained = train_world_models(task, config, train, seeds, progress=False, callback=callback)
        for i, seed in enumerate(seeds):
            save_world_model(folder / f"seed_{seed}", task, trained, i)
        model, params, seconds = trained.model, trained.params, trained.seconds
    if read_json(out / f"world_model{tag}" / "open_loop.json") is None:  # missing, or cut short
        _write_open_loop(out / f"world_model{tag}", task, model, params, train, test, seeds, seconds)
    return model, params, train, test


def _write_open_loop(folder: Path, task: Task, model, params, train, test, seeds: list[int], seconds: float) -> None:
    horizon = min(25, int(np.asarray(test.episode_lengths).max()) // 2)
    result = open_loop_errors(model, params, train, test, context=horizon, horizon=horizon)
    plot_open_loop(folder / "open_loop.png", result)
    write_json(folder / "open_loop.json", {
        "context": result.context, "chunks": int(result.imagined.shape[1]), "seeds": list(seeds),
        "rssm_per_seed": result.rssm.tolist(), "last_observation": result.last.tolist(),
        "linear": result.linear.tolist(),
        "rssm": [result.interval(k).as_dict() for k in range(1, result.rssm.shape[1] + 1)],
        "training_seconds": seconds, "datasets": world_model_datasets(task),
        "training_episodes": int(train.num_episodes)})


def _run_rssm_mpc(job: Job) -> None:
    """Evaluate MPC at every curve point while the RSSMs train (their curves are kept in `units/rssm-mpc/`, so a
    resumed run loads the models and evaluates only the final point), then write the pending units."""
    out, task, seeds, (config, mpc_config), (variant,) = job.out, job.task, job.seeds, job.config, job.variants
    saved_curves, tag = out / "units" / row_folder(variant.row) / "curves.json", rssm_tag(variant)
    curves = Curves(job.evaluation, seeds)

    def point(done: int, model, params) -> None:
        curves.add(done, MPC.for_task(model, mpc_config, task), params, done == config.optim.steps)

    saved = read_json(saved_curves)  # None when missing or cut short: the curves are computed again
    if saved is not None:
        model, params, train, _ = world_models(out, task, config, seeds, tag=tag)
        point(config.optim.steps, model, params)
        curves.points = {int(s): c for s, c in saved.items()}
    else:
        model, params, train, _ = world_models(out, task, config, seeds, callback=point, tag=tag)
        write_json(saved_curves, curves.points)
    first = jax.tree.map(lambda x: x[0], params)
    job.finish(curves, measure_agent_latency(MPC.for_task(model, mpc_config, task), first,
                                                         np.asarray(train.observations[:200])))


def _run_ppo_wm(job: Job) -> None:
    """Train PPO inside every seed's RSSM (or load it, when only the evaluation was lost) and evaluate it in the
    task itself."""
    out, task, seeds, (config, ppo, dream), (variant,) = job.out, job.task, job.seeds, job.config, job.variants
    model, params, train, _ = world_models(out, task, config, seeds, tag=rssm_tag(variant))
    folder = out / "checkpoints" / row_folder(variant.row)
    if all((folder / f"seed_{s}").exists() for s in seeds):
        loaded = [load_ppo(folder / f"seed_{s}", task.name)[2:4] for s in seeds]
        policies = jax.tree.map(lambda *x: jnp.stack(x), *loaded)
    else:
        learners, imagined = train_ppo_in_models(task, model, params, frames_from(train), seeds, ppo, dream)
        for i, seed in enumerate(seeds):
            save_ppo(folder / f"seed_{seed}", task, ppo, *learner_of(learners, i), seed=seed, trained_in="rssm",
                     imagined_steps=ppo.num_updates * ppo.steps_per_update,
                     final_imagined_return=float(np.nanmean(imagined[i, -5:])))
        policies = agent_params(learners)
    agent, curves = GaussianAgent.for_task(task, ppo), Curves(job.evaluation, seeds)
    curves.add(ppo.num_updates * ppo.steps_per_update, agent, policies, final=True)
    first = jax.tree.map(lambda x: x[0], policies)
    job.finish(curves, measure_agent_latency(agent, first, np.asarray(train.observations[:200])))


RSSM_MPC = Method("rssm-mpc", lambda task, budget: hyperparameters("rssm-mpc", BUDGETS[budget]), _run_rssm_mpc,
                  work=lambda values: values["rssm"]["steps"], online=True, generative=True,
                  datasets=world_model_datasets,
                  configure=lambda values: (RSSMConfig.from_dict(values["rssm"]), MPCConfig(**values["mpc"])))
PPO_WM = Method("ppo-wm", lambda task, budget: hyperparameters("ppo-wm", BUDGETS[budget]), _run_ppo_wm,
                work=lambda values: values["ppo"]["total_steps"], online=True, generative=True,
                curve_axis="PPO imagined steps", datasets=world_model_datasets,
                configure=lambda values: (RSSMConfig.from_dict(values["rssm"]),
                                          PPOConfig.from_dict(values["ppo"]).validate(), DreamConfig(**values["dream"])))
