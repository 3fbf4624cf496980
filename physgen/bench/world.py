"""The world-model methods of `physgen bench`: `rssm-mpc` (planning in an RSSM learned offline, with the RSSM's
own open-loop evaluation) and `ppo-wm` (PPO trained inside an RSSM learned online).

`rssm-mpc`'s RSSMs, one per training seed, are trained together on the training splits of the task's world-model
datasets (the expert's, plus data that also shows failures: a noisy expert on the pure-JAX tasks, the medium
policy on hopper) and checkpointed under `checkpoints/rssm/`. `ppo-wm` learns its own from the real steps its
policy takes (`physgen.world_models.online`), so its curve shares PPO's axis: real environment steps. Their units,
curves, failure categories, latency and videos are those of every other method.
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
from physgen.devices import everywhere, writer_first
from physgen.envs import Task
from physgen.io import read_json, write_json
from physgen.policies.ppo import (GaussianAgent, PPOConfig, agent_params, learner_of, load_ppo, load_ppo_policy,
                                 save_ppo)
from physgen.world_models.data import concat_trajectories, generate_noisy_dataset
from physgen.world_models.dream import DreamConfig
from physgen.world_models.evaluate import open_loop_errors, plot_open_loop
from physgen.world_models.mpc import MPC, MPCConfig
from physgen.world_models.online import OnlineConfig, train_online
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
    # the steps of the RSSM and of PPO follow from the online loop's counts (`configure_ppo_wm`), so they are left out
    online = {k: v for k, v in RSSMConfig.of(learning_rate=budget.rssm_learning_rate).as_flat().items()
              if k not in ("steps", "steps_per_call")}
    ppo = {k: v for k, v in dataclasses.asdict(PPOConfig(num_envs=16, rollout_steps=128)).items()
           if k not in ("total_steps", "eval_episodes", "checkpoint_every")}
    return {"rssm": online, "ppo": ppo, "dream": dataclasses.asdict(DreamConfig()),
            "online": dataclasses.asdict(OnlineConfig(real_steps=budget.ppo_steps, model_steps=budget.model_steps,
                                                      dream_updates=budget.dream_updates,
                                                      curve_points=budget.curve_points))}


def configure_ppo_wm(values: dict) -> tuple[RSSMConfig, PPOConfig, DreamConfig, OnlineConfig]:
    """ppo-wm's configs; the RSSM's schedule spans its gradient steps over all iterations, PPO's learning rate
    anneals over its updates in the model."""
    online = OnlineConfig(**values["online"])
    rssm = RSSMConfig.from_dict({**values["rssm"], "steps": online.iterations * online.model_steps})
    ppo = PPOConfig.from_dict(values["ppo"])
    ppo = dataclasses.replace(ppo, total_steps=online.iterations * online.dream_updates * ppo.steps_per_update,
                              eval_episodes=0, checkpoint_every=0).validate()
    return rssm, ppo, DreamConfig(**values["dream"]), online


def _splits(task: Task):
    """Train and held-out splits of the world-model datasets, generating the missing ones (never a broken one)."""
    noisy = lambda: generate_noisy_dataset(task, episodes=task.dataset_episodes, seed=1)
    datasets = [writer_first(lambda: ensure_dataset(task, name, noisy if name == "noisy-v0" else None,
                                                    load_ppo_policy)) for name in world_model_datasets(task)]
    parts = [split_episodes(dataset.trajectories, validation_fraction=0.1, seed=0) for dataset in datasets]
    return tuple(concat_trajectories([split[i] for split in parts]) for i in (0, 1))


def rssm_tag(variant: Variant) -> str:
    """The suffix of the folders of a variant's RSSMs: its varied RSSM fields in parentheses ("" when none vary)."""
    rssm = variant.hyperparameters["rssm"]
    varied = [f"{name}={value}" for name, value in variant.varied.items()
              if name.rpartition(".")[0] in ("", "rssm") and name.rpartition(".")[2] in rssm]
    return f"({','.join(varied)})" if varied else ""


def world_models(out: Path, task: Task, config: RSSMConfig, seeds: list[int], callback=None, tag: str = "",
                 devices: int = 1):
    """(model, params stacked over seeds, train split, held-out split). Without `callback` the models are loaded
    from `checkpoints/rssm<tag>/` when every seed is there; otherwise they are trained as one group, spread over
    `devices` (calling `callback(done, model, params)` during training; training is seeded, so a retrained group is
    the same) and saved. The open-loop evaluation is written to `world_model<tag>/` whenever it is missing."""
    train, test = _splits(task)
    folder = out / "checkpoints" / f"rssm{tag}"
    if callback is None and everywhere(all((folder / f"seed_{s}").exists() for s in seeds)):  # same config: protocol
        loaded = [load_world_model(folder / f"seed_{s}", task.name) for s in seeds]
        model, params = loaded[0][0], jax.tree.map(lambda *x: jnp.stack(x), *[p for _, p, _ in loaded])
        seconds = loaded[0][2]["training_seconds"]
    else:
        trained = train_world_models(task, config, train, seeds, progress=False, callback=callback,
                                     devices=devices)
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
    if everywhere(saved is not None):
        model, params, train, _ = world_models(out, task, config, seeds, tag=tag)
        point(config.optim.steps, model, params)
        curves.points = {int(s): c for s, c in saved.items()}
    else:
        model, params, train, _ = world_models(out, task, config, seeds, callback=point, tag=tag,
                                               devices=job.evaluation.devices)
        write_json(saved_curves, curves.points)
    first = jax.tree.map(lambda x: x[0], params)
    job.finish(curves, measure_agent_latency(MPC.for_task(model, mpc_config, task), first,
                                                         np.asarray(train.observations[:200])))


def _run_ppo_wm(job: Job) -> None:
    """Train PPO with an online RSSM per seed, evaluating it in the task at every curve point (the curves are kept
    in its units folder, so a run cut short after training loads the checkpoints and evaluates only the final
    point), then write the pending units."""
    out, task, seeds, (variant,) = job.out, job.task, job.seeds, job.variants
    rssm, ppo, dream, online = job.config
    folder, saved_curves = out / "checkpoints" / row_folder(variant.row), out / "units" / row_folder(variant.row)
    agent, curves = GaussianAgent.for_task(task, ppo), Curves(job.evaluation, seeds)
    saved = read_json(saved_curves / "curves.json")  # None when missing or cut short: trained again
    if everywhere(saved is not None and all((folder / f"seed_{s}").exists() for s in seeds)):
        policies = jax.tree.map(lambda *x: jnp.stack(x), *[load_ppo(folder / f"seed_{s}", task.name)[2:4]
                                                          for s in seeds])
        curves.add(online.iterations * online.steps_per_iteration, agent, policies, final=True)
        curves.points = {int(s): c for s, c in saved.items()}
    else:
        final = online.iterations * online.steps_per_iteration

        def point(real_steps: int, result) -> None:
            curves.add(real_steps, agent, agent_params(result.learners), real_steps == final)
            job.advance(real_steps - point.done)
            point.done = real_steps

        point.done = 0
        result = train_online(task, rssm, ppo, dream, online, seeds, job.train if online.offline_start else None,
                              callback=point)
        for i, seed in enumerate(seeds):
            save_ppo(folder / f"seed_{seed}", task, ppo, *learner_of(result.learners, i), seed=seed,
                     trained_in="rssm-online", env_steps=final,
                     final_real_return=float(np.nanmean(result.history.real_return[i, -5:])))
        write_json(saved_curves / "curves.json", curves.points)
        policies = agent_params(result.learners)
    first = jax.tree.map(lambda x: x[0], policies)
    job.finish(curves, measure_agent_latency(agent, first, np.asarray(job.train.observations[:200])))


RSSM_MPC = Method("rssm-mpc", lambda task, budget: hyperparameters("rssm-mpc", BUDGETS[budget]), _run_rssm_mpc,
                  work=lambda values: values["rssm"]["steps"], online=True, generative=True,
                  datasets=world_model_datasets,
                  configure=lambda values: (RSSMConfig.from_dict(values["rssm"]), MPCConfig(**values["mpc"])))
PPO_WM = Method("ppo-wm", lambda task, budget: hyperparameters("ppo-wm", BUDGETS[budget]), _run_ppo_wm,
                work=lambda values: values["online"]["real_steps"], online=True, generative=True,
                curve_axis="real environment steps", configure=configure_ppo_wm)
