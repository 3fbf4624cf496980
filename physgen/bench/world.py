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

from physgen.bench.protocol import Budget
from physgen.data import generate_dataset, load_dataset, split_episodes
from physgen.envs import Task
from physgen.errors import DatasetMissing
from physgen.io import read_json, write_json
from physgen.policies.ppo import PPOConfig
from physgen.world_models.data import concat_trajectories, frames_from, generate_noisy_dataset
from physgen.world_models.dream import DreamConfig
from physgen.world_models.mpc import MPCConfig
from physgen.world_models.rssm import RSSMConfig

def world_model_datasets(task: Task) -> list[str]:
    """The datasets the RSSMs learn from: the task's standard ones, and a noisy expert's on pure-JAX tasks (an
    expert that never fails shows a model nothing of failure)."""
    names = [f"{name}-v0" for name in task.datasets]
    return names + (["noisy-v0"] if task.functional is not None else [])


def hyperparameters(method: str, budget: Budget) -> dict:
    rssm = dataclasses.asdict(RSSMConfig(steps=budget.rssm_steps,
                                         steps_per_call=-(-budget.rssm_steps // budget.curve_points)))
    if method == "rssm-mpc":
        return {"rssm": rssm, "mpc": dataclasses.asdict(MPCConfig())}
    ppo = PPOConfig(total_steps=budget.dream_steps, num_envs=16, rollout_steps=128, eval_episodes=0,
                    checkpoint_every=0)
    return {"rssm": rssm, "ppo": dataclasses.asdict(ppo), "dream": dataclasses.asdict(DreamConfig())}


def _splits(task: Task):
    """Train and held-out splits of the world-model datasets, generating the missing ones (never a broken one)."""
    parts = []
    for name in world_model_datasets(task):
        try:
            dataset = load_dataset(task, name)
        except DatasetMissing:
            print(f"physgen: generating physgen/{task.name}/{name} for the world models (first run only)")
            if name == "noisy-v0":
                generate_noisy_dataset(task, episodes=task.dataset_episodes, seed=1)
            else:
                generate_dataset(task, policy=name.removesuffix("-v0"))
            dataset = load_dataset(task, name)
        parts.append(split_episodes(dataset.trajectories, validation_fraction=0.1, seed=0))
    return tuple(concat_trajectories([split[i] for split in parts]) for i in (0, 1))


def world_models(out: Path, task: Task, config: RSSMConfig, seeds: list[int], callback=None):
    """(model, params stacked over seeds, train split, held-out split). Without `callback` the models are loaded
    from `checkpoints/rssm/` when every seed is there; otherwise they are trained as one group (calling
    `callback(done, model, params)` during training; training is seeded, so a retrained group is the same) and
    saved. The open-loop evaluation is written to `world_model/` whenever it is missing."""
    from physgen.world_models.train import load_world_model, save_world_model, train_world_models

    train, test = _splits(task)
    folder = out / "checkpoints" / "rssm"
    if callback is None and all((folder / f"seed_{s}").exists() for s in seeds):  # protocol check: same config
        loaded = [load_world_model(folder / f"seed_{s}", task.name) for s in seeds]
        model, params = loaded[0][0], jax.tree.map(lambda *x: jnp.stack(x), *[p for _, p, _ in loaded])
        seconds = loaded[0][2]["training_seconds"]
    else:
        trained = train_world_models(task, config, train, seeds, progress=False, callback=callback)
        for i, seed in enumerate(seeds):
            save_world_model(folder / f"seed_{seed}", task, trained, i)
        model, params, seconds = trained.model, trained.params, trained.seconds
    if read_json(out / "world_model" / "open_loop.json") is None:  # missing, or cut short
        _write_open_loop(out, task, model, params, train, test, seeds, seconds)
    return model, params, train, test


def _write_open_loop(out: Path, task: Task, model, params, train, test, seeds: list[int], seconds: float) -> None:
    from physgen.world_models.evaluate import open_loop_errors, plot_open_loop

    horizon = min(25, int(np.asarray(test.episode_lengths).max()) // 2)
    result = open_loop_errors(model, params, train, test, context=horizon, horizon=horizon)
    plot_open_loop(out / "world_model" / "open_loop.png", result)
    write_json(out / "world_model" / "open_loop.json", {
        "context": result.context, "chunks": int(result.imagined.shape[1]), "seeds": list(seeds),
        "rssm_per_seed": result.rssm.tolist(), "last_observation": result.last.tolist(),
        "linear": result.linear.tolist(),
        "rssm": [result.interval(k).as_dict() for k in range(1, result.rssm.shape[1] + 1)],
        "training_seconds": seconds, "datasets": world_model_datasets(task),
        "training_episodes": int(train.num_episodes)})


def run_rssm_mpc(out: Path, seeds: list[int], pending: list[int], evaluation, protocol: dict) -> None:
    """Evaluate MPC at every curve point while the RSSMs train (their curves are kept in `units/rssm-mpc/`, so a
    resumed run loads the models and evaluates only the final point), then write the pending units."""
    from physgen.bench.runner import write_latency, write_unit
    from physgen.control.latency import measure_step_latency
    from physgen.world_models.mpc import MPC, evaluate_mpc

    experiment, task = protocol["experiment"], evaluation.task
    values = experiment["hyperparameters"]["rssm-mpc"]
    config, mpc_config = RSSMConfig.from_dict(values["rssm"]), MPCConfig(**values["mpc"])
    all_seeds = np.asarray(experiment["evaluation_seeds"])
    curve_seeds = all_seeds[: experiment["curve_episodes"]]
    saved_curves = out / "units" / "rssm-mpc" / "curves.json"
    curves: dict[int, list[dict]] = {s: [] for s in seeds}
    final = {}

    def point(done: int, model, params) -> None:
        final["mpc"] = mpc = MPC.for_task(model, mpc_config, task)
        final["rollouts"] = rollouts = evaluate_mpc(task, mpc, params, all_seeds if done == config.steps
                                                    else curve_seeds, evaluation.expert_return)
        for i, seed in enumerate(seeds):
            curves[seed].append({"step": done, "success_rate": float(rollouts.success[i].mean()),
                                 "episodes": int(rollouts.success.shape[1])})

    saved = read_json(saved_curves)  # None when missing or cut short: the curves are computed again
    if saved is not None:
        model, params, train, _ = world_models(out, task, config, seeds)
        point(config.steps, model, params)
        curves = {int(s): c for s, c in saved.items()}
    else:
        model, params, train, _ = world_models(out, task, config, seeds, callback=point)
        write_json(saved_curves, curves)
    mpc, rollouts = final["mpc"], final["rollouts"]
    first = jax.tree.map(lambda x: x[0], params)
    step = jax.jit(mpc.act)
    state = {"carry": mpc.start(), "key": jax.random.key(0)}

    def act(obs):
        state["key"], key = jax.random.split(state["key"])
        action, state["carry"] = step(first, state["carry"], jnp.asarray(obs), key)
        return np.asarray(action)

    write_latency(out, "rssm-mpc", measure_step_latency(act, np.asarray(train.observations[:200])))
    for i, seed in ((i, s) for i, s in enumerate(seeds) if s in pending):
        record, arrays = evaluation.record(
            "rssm-mpc", seed, all_seeds, rollouts.observations[i], rollouts.actions[i],
            {k: v[i] for k, v in rollouts.events.items()}, rollouts.lengths[i], rollouts.returns[i],
            rollouts.success[i], curves[seed])
        write_unit(out, "rssm-mpc", seed, record, arrays)


def run_ppo_wm(out: Path, seeds: list[int], pending: list[int], evaluation, protocol: dict) -> None:
    from physgen.bench.runner import write_latency, write_ppo_unit
    from physgen.control.latency import measure_step_latency
    from physgen.policies.ppo import learner_of, load_ppo_policy, save_ppo
    from physgen.world_models.dream import train_ppo_in_models

    experiment, task = protocol["experiment"], evaluation.task
    values = experiment["hyperparameters"]["ppo-wm"]
    config, ppo, dream = (RSSMConfig.from_dict(values["rssm"]), PPOConfig.from_dict(values["ppo"]),
                          DreamConfig(**values["dream"]))
    model, params, train, _ = world_models(out, task, config, seeds)
    folder = out / "checkpoints" / "ppo-wm"
    if not all((folder / f"seed_{s}").exists() for s in seeds):  # else only the evaluation was lost
        learners, imagined = train_ppo_in_models(task, model, params, frames_from(train), seeds, ppo, dream)
        for i, seed in enumerate(seeds):
            save_ppo(folder / f"seed_{seed}", task, ppo, *learner_of(learners, i), seed=seed, trained_in="rssm",
                     imagined_steps=ppo.num_updates * ppo.steps_per_update,
                     final_imagined_return=float(np.nanmean(imagined[i, -5:])))
    policy = load_ppo_policy(folder / f"seed_{seeds[0]}")
    write_latency(out, "ppo-wm", measure_step_latency(lambda o: policy(o[None]), np.asarray(train.observations[:200])))
    for seed in pending:
        write_ppo_unit(out, "ppo-wm", folder, seed, evaluation, experiment["episodes"],
                       ppo.num_updates * ppo.steps_per_update, [])
