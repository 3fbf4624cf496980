"""One training loop for every offline policy: jitted, `steps_per_call` gradient steps per call in `lax.scan`,
`vmap`ped over seeds, with EMA weights for evaluation and a progress bar."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from rich.progress import Progress

from physgen.data import Normalizer, Trajectories, sample_windows
from physgen.devices import first_seeds, fit_mesh, gathered, on_each_device, placed_seeds, replicated, seed_mesh
from physgen.envs import Task, image_shape, observes_frames
from physgen.errors import PhysgenError
from physgen.policies.policy import Policy, PolicyConfig, PolicyState, observation_normalizer


class TrainState(NamedTuple):
    params: Any
    ema: Any
    opt_state: Any
    step: jax.Array


class TrainedPolicies(NamedTuple):
    """Seeds stacked on the leading axis: `states` act with the EMA weights, `params` are the raw weights,
    `losses` (seeds, calls) the mean training loss of each call."""

    policy: Policy
    states: PolicyState
    params: Any
    losses: np.ndarray
    seeds: tuple[int, ...]

    def state_of(self, index: int) -> PolicyState:
        return jax.tree.map(lambda x: x[index], self.states)


def fit_to_observations(task: Task, config: PolicyConfig) -> PolicyConfig:
    """`config` with `image_size` set to the side of `task`'s camera frames when it observes frames
    (`physgen.envs.images`); an image size that does not match the task's observations is refused."""
    size, frames = config.vision.image_size, observes_frames(task)
    if frames and not size:
        return config.replace(image_size=image_shape(task)[0])
    if size and (not frames or image_shape(task)[0] != size):
        raise PhysgenError(f"image_size {size} makes an image policy of {size}x{size}x3 frames, but task {task.name!r} "
                           f"observes {task.obs_dim} {'pixel values' if frames else 'numbers'}; use its image variant "
                           f"(--obs image) or leave image_size at 0 (set from the task)")
    return config


def train_policies(task: Task, config: PolicyConfig, data: Trajectories, seeds: list[int], progress: bool = True,
                   callback=None, start: Any = None, teacher: Any = None, loss=None,
                   devices: int | str | None = None) -> TrainedPolicies:
    """Train one policy per seed on `data` (the training split), all seeds in one compiled program.

    Normalizers are fitted on `data` (min-max, as Diffusion Policy). `callback(step, trained)` runs after every call.
    Distillation (`physgen.policies.distill`) starts from `start`, parameters per seed (seeds on the leading axis)
    instead of fresh ones, and minimises `loss(params, teacher, batch, key)` instead of the policy's own loss,
    where `teacher` is a pytree per seed that the loss reads (the trained teacher's weights).
    `devices` (`physgen.devices.seed_mesh`: a count or "all") spreads the seeds over up to that many devices, two or
    more on each, padded with copies of the last seed that every output leaves out; each device trains its seeds
    bit for bit as one device trains that group (which may differ from all the seeds together in the last bits:
    `physgen.devices`).
    """
    config = fit_to_observations(task, config)
    n = len(seeds)
    mesh = fit_mesh(seed_mesh(devices), n)
    obs_norm, act_norm = observation_normalizer(config, data.observations), Normalizer.fit(data.actions)
    keys = jnp.stack([jax.random.key(s) for s in seeds])
    init_keys, train_keys = jax.vmap(jax.random.split, out_axes=1)(keys)
    # each device trains its seeds (placed after the split, which does not keep the placement) on its copy of the data
    init_keys, train_keys, start, teacher = placed_seeds((init_keys, train_keys, start, teacher), mesh)
    data = replicated(data, mesh)
    policy, _ = Policy.abstract(config, task.obs_dim, task.act_dim)
    optimizer = config.optim.optimizer()
    objective = (lambda params, teacher, batch, key: policy.loss(params, batch, key)) if loss is None else loss

    def init(key, start):
        params = policy.init(key) if start is None else start
        return TrainState(params, params, optimizer.init(params), jnp.int32(0))

    def train_step(state: TrainState, key, data, teacher):
        k_batch, k_loss = jax.random.split(key)
        chunking = config.chunking
        batch = sample_windows(data, k_batch, config.optim.batch_size, chunking.obs_steps, chunking.action_steps,
                               obs_norm, act_norm)
        loss, grads = jax.value_and_grad(objective)(state.params, teacher, batch, k_loss)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # Diffusion Policy's EMA warm-up: the decay grows towards `ema_decay` over the first steps
        decay = jnp.minimum(config.ema_decay, (1.0 + state.step) / (10.0 + state.step))
        ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema, params)
        return TrainState(params, ema, opt_state, state.step + 1), loss

    def run_call(state, key, data, teacher, steps):
        return jax.lax.scan(lambda s, k: train_step(s, k, data, teacher), state, jax.random.split(key, steps))

    states = on_each_device(jax.jit(jax.vmap(init)), mesh, init_keys, start)
    calls = -(-config.optim.steps // config.optim.steps_per_call)
    run = jax.jit(jax.vmap(run_call, in_axes=(0, 0, None, 0, None)), static_argnums=4)
    losses = []
    low, high = jnp.asarray(task.action_space.low), jnp.asarray(task.action_space.high)

    def trained(states):
        broadcast = (jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *x.shape)), v)
                     for v in (obs_norm, act_norm, low, high))
        stacked, params = PolicyState(first_seeds(states.ema, n, mesh), *broadcast), first_seeds(states.params, n, mesh)
        return TrainedPolicies(policy, stacked, params, np.stack(losses, axis=1) if losses else np.zeros((n, 0)),
                               tuple(seeds))

    with Progress(disable=not progress, transient=True) as bar:
        job = bar.add_task(f"{config.method} on {task.name}, {len(seeds)} seeds", total=config.optim.steps)
        done = 0
        for call in range(calls):
            steps = min(config.optim.steps_per_call, config.optim.steps - done)
            call_keys = jax.vmap(lambda k: jax.random.fold_in(k, call))(train_keys)
            states, call_losses = on_each_device(lambda *args: run(*args, steps), mesh, states, call_keys, data,
                                                 teacher)
            losses.append(gathered(call_losses)[:n].mean(axis=1))
            done += steps
            bar.update(job, completed=done, description=f"{config.method} on {task.name}, {len(seeds)} seeds, "
                       f"loss {losses[-1].mean():.4f}")
            if callback is not None:
                callback(done, trained(states))
    return trained(states)
