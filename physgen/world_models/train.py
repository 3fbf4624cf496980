"""Training of the world models: one jitted program per call (`steps_per_call` gradient steps in `lax.scan`),
`vmap`ped over seeds as `physgen.policies.train` does; orbax checkpoints through `physgen.checkpoint`."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.flatten_util import ravel_pytree
from rich.progress import Progress

from physgen.checkpoint import load_checkpoint, save_checkpoint
from physgen.configs import override
from physgen.data import load_dataset, split_episodes
from physgen.devices import (first_seeds, fit_mesh, gathered, on_each_device, placed_seeds, replicated,
                             seed_mesh)
from physgen.envs import Task, get_task
from physgen.errors import PhysgenError
from physgen.world_models.data import concat_trajectories
from physgen.world_models.evaluate import open_loop_errors
from physgen.world_models.rssm import RSSM, RSSMConfig, fit_scales
from physgen.world_models.vae import VAE, VAEConfig, render_frames

CONFIGS = {"rssm": RSSMConfig, "vae": VAEConfig}


class TrainState(NamedTuple):
    params: Any
    opt_state: Any


class TrainedWorldModels(NamedTuple):
    """Seeds stacked on the leading axis of `params`; `metrics[name]` (seeds, calls) holds each call's mean loss
    terms; `seconds` is the wall-clock training time, compilation included."""

    model: RSSM | VAE
    params: Any
    metrics: dict[str, np.ndarray]
    seeds: tuple[int, ...]
    seconds: float

    @property
    def method(self) -> str:
        return "rssm" if isinstance(self.model, RSSM) else "vae"

    def params_of(self, index: int):
        return jax.tree.map(lambda x: x[index], self.params)


def abstract_model(config: RSSMConfig | VAEConfig, obs_dim: int, act_dim: int) -> tuple[RSSM | VAE, Any]:
    """The model a config describes and its parameter shapes (nothing initialized)."""
    if isinstance(config, RSSMConfig):
        return RSSM.abstract(config, obs_dim, act_dim)
    return VAE.abstract(config, obs_dim)


@functools.cache
def gradient_step(model: RSSM | VAE):
    """(optimizer, step): `step(state, batch, key)` is one gradient step of the model's loss on `batch`, returning
    (state, loss terms). Built once per model structure and config.

    The optimizer works on the parameters raveled into one vector: a handful of fused kernels instead of a dozen per
    parameter array, which more than halves its share of the compile time on CPU."""
    optimizer = model.config.optim.optimizer()
    unravel = ravel_pytree(model.init(jax.random.key(0)))[1]

    def step(state: TrainState, batch, key):
        (_, metrics), grads = jax.value_and_grad(model.loss, has_aux=True)(state.params, batch, key)
        flat = ravel_pytree(state.params)[0]
        updates, opt_state = optimizer.update(ravel_pytree(grads)[0], state.opt_state, flat)
        return TrainState(unravel(flat + updates), opt_state), metrics

    return optimizer, step


def initial_states(model: RSSM | VAE, keys: jax.Array) -> TrainState:
    """Fresh parameters and optimizer state per key, stacked (eager: compiling initializers costs more than running
    them)."""
    optimizer = gradient_step(model)[0]
    return jax.tree.map(lambda *x: jnp.asarray(np.stack(x)), *[
        TrainState(p, optimizer.init(ravel_pytree(p)[0])) for p in (model.init(key) for key in keys)])


@functools.cache
def _programs(model: RSSM | VAE):
    """The compiled training call of a model: `steps` gradient steps on batches of `arrays`, vmapped over seeds."""
    step = gradient_step(model)[1]

    def train_step(state: TrainState, key, arrays):
        k_batch, k_loss = jax.random.split(key)
        return step(state, model.batch(arrays, k_batch), k_loss)

    def run_call(state, key, arrays, steps):
        state, metrics = jax.lax.scan(lambda s, k: train_step(s, k, arrays), state, jax.random.split(key, steps))
        return state, jax.tree.map(jnp.mean, metrics)

    return jax.jit(jax.vmap(run_call, in_axes=(0, 0, None, None)), static_argnums=3)


def train_world_models(task: Task, config: RSSMConfig | VAEConfig, data, seeds: list[int],
                       progress: bool = True, callback: Callable | None = None,
                       devices: int | str | None = None) -> TrainedWorldModels:
    """Train one model per seed, all seeds in one compiled program.

    `data` is the training split (`Trajectories`) for an RSSM or a state VAE, or a frame array
    (`render_frames`) for an image VAE. `callback(done, model, params)` runs after every call of `steps_per_call`
    steps with the gradient steps done, the model and the parameters so far (stacked over seeds). `devices`
    spreads the seeds over devices as `physgen.policies.train_policies` does (`physgen.devices`).
    """
    if not seeds:
        raise PhysgenError("no seeds to train; pass at least one seed")
    start, n = time.perf_counter(), len(seeds)
    mesh = fit_mesh(seed_mesh(devices), n)
    keys = jnp.stack([jax.random.key(s) for s in seeds])
    init_keys, train_keys = jax.vmap(jax.random.split, out_axes=1)(keys)
    if isinstance(config, RSSMConfig):
        config = fit_scales(config, data)
    model, _ = abstract_model(config, task.obs_dim, task.act_dim)
    arrays = replicated(model.prepare(data), mesh)  # checks the data before anything is compiled
    run = _programs(model)
    states, train_keys = placed_seeds((initial_states(model, init_keys), train_keys), mesh)
    history: list[dict] = []
    method = "rssm" if isinstance(model, RSSM) else "vae"
    with Progress(disable=not progress, transient=True) as bar:
        job = bar.add_task(f"{method} on {task.name}, {len(seeds)} seeds", total=config.optim.steps)
        done, call = 0, 0
        while done < config.optim.steps:
            steps = min(config.optim.steps_per_call, config.optim.steps - done)
            call_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(train_keys, call)
            states, metrics = on_each_device(lambda *args: run(*args, steps), mesh, states, call_keys, arrays)
            history.append(jax.tree.map(lambda x: x[:n], gathered(metrics)))
            if not np.all(np.isfinite(history[-1]["loss"])):
                raise PhysgenError(f"{method} training diverged (loss {history[-1]['loss']}) after {done + steps} "
                                   "steps; lower learning_rate or grad_clip")
            done, call = done + steps, call + 1
            if callback is not None:
                callback(done, model, first_seeds(states.params, n, mesh))
            bar.update(job, completed=done, description=f"{method} on {task.name}, {len(seeds)} seeds, "
                       f"loss {history[-1]['loss'].mean():.4f}")
    metrics = {name: np.stack([h[name] for h in history], axis=1) for name in history[0]}
    return TrainedWorldModels(model, first_seeds(states.params, n, mesh), metrics, tuple(seeds),
                              time.perf_counter() - start)


def save_world_model(path: str | Path, task: Task, trained: TrainedWorldModels, index: int) -> Path:
    """Checkpoint seed `index` of `trained`: parameters and config (which holds the observation and reward scales)."""
    meta = {"method": trained.method, "task": task.name, "seed": trained.seeds[index],
            "config": trained.model.config.as_flat(), "obs_dim": task.obs_dim, "act_dim": task.act_dim,
            "training_seconds": trained.seconds}
    return save_checkpoint(path, {"params": nnx.to_pure_dict(trained.params_of(index))}, meta)


def load_world_model(path: str | Path, task: str | None = None) -> tuple[RSSM | VAE, Any, dict]:
    """(model, parameters, meta) of a world-model checkpoint; nothing else is needed to rebuild it."""
    arrays, meta = load_checkpoint(path, task)
    if meta["method"] not in CONFIGS:
        raise PhysgenError(f"checkpoint {path} holds a {meta['method']!r} model, not a world model (rssm or vae)")
    config = CONFIGS[meta["method"]].from_dict(meta["config"])
    model, params = abstract_model(config, meta["obs_dim"], meta["act_dim"])
    nnx.replace_by_pure_dict(params, arrays["params"])
    return model, jax.tree.map(jnp.asarray, params), meta


def train_from_cli(task_name: str, method: str, seeds: list[int], steps: int | None, out: str,
                   datasets: tuple[str, ...] = ("expert-v0",), images: bool = False,
                   overrides: dict[str, str] | None = None, devices: int | str | None = None) -> str:
    """`physgen train --method rssm|vae`: train on the datasets' training splits (by episode, 10% held out),
    checkpoint each seed under `out/seed_<s>`, evaluate on the held-out episodes, summarise in text. With
    `images`, the VAE learns rendered frames of expert episodes instead (pure-JAX tasks), and is evaluated on
    frames of other episodes."""
    if method not in CONFIGS:
        raise PhysgenError(f"unknown world-model method {method!r}; choose one of {', '.join(CONFIGS)}")
    if images and method != "vae":
        raise PhysgenError("only the VAE learns images; drop --images or use --method vae")
    task = get_task(task_name)
    changes = {**({} if steps is None else {"steps": steps}), **({"inputs": "image"} if images else {})}
    config = CONFIGS[method].of(**changes)
    config = CONFIGS[method].from_dict(override(config.as_flat(), overrides or {}))
    if images:
        size, episodes = config.image_size, config.frame_episodes
        train, test = (render_frames(task, seed, n, size) for seed, n in ((0, episodes), (1, max(1, episodes // 10))))
    else:
        splits = [split_episodes(load_dataset(task, name).trajectories, validation_fraction=0.1, seed=0)
                  for name in datasets]
        train, test = (concat_trajectories([split[i] for split in splits]) for i in (0, 1))
    trained = train_world_models(task, config, train, seeds, devices=devices)
    source = "rendered frames" if images else ", ".join(datasets)
    lines = [(f"{method} on {task.name} ({source}): {config.optim.steps} steps x {len(seeds)} seeds, "
              f"{trained.seconds:.0f} s")]
    for index, seed in enumerate(seeds):
        path = save_world_model(Path(out) / f"seed_{seed}", task, trained, index)
        lines.append(f"  seed {seed}: final loss {trained.metrics['loss'][index, -1]:.4f}, checkpoint {path}")
    if method == "rssm":
        ahead = min(25, int(np.asarray(test.episode_lengths).max()) // 2)
        lines.append(open_loop_errors(trained.model, trained.params, train, test, ahead, ahead).summary())
    else:
        x = trained.model.prepare(test)
        errors = [float(trained.model.reconstruction_rmse(trained.params_of(i), x)) for i in range(len(seeds))]
        lines.append("held-out reconstruction RMSE per seed: " + ", ".join(f"{e:.4f}" for e in errors))
    return "\n".join(lines)
