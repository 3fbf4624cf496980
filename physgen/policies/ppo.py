"""PPO baseline for continuous actions: several seeds trained together in one process.

The policy and the update are vmapped over seeds; the environments are seeds x envs. A pure-JAX task trains as one
jitted program (rollouts and updates in `lax.scan`, purejaxrl style); a Gymnasium task steps a
`SyncVectorEnv` from Python and jits everything else. Defaults are CleanRL's well-tested MuJoCo settings.

    result = train_ppo(get_task("hopper"), PPOConfig(), seeds=[0, 1, 2, 3, 4], out_dir="runs/ppo-hopper")
    policy = load_ppo_policy("runs/ppo-hopper/seed_0")   # numpy observation -> numpy action
"""

from __future__ import annotations

import dataclasses
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, NamedTuple

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from physgen.checkpoint import load_checkpoint, save_checkpoint
from physgen.configs import override
from physgen.data import Normalizer
from physgen.devices import first_seeds, fit_mesh, gathered, on_each_device, placed_seeds, seed_mesh
from physgen.envs import FunctionalEnv, Task, get_task
from physgen.envs.rollout import episode_seeds, record_episodes
from physgen.errors import PhysgenError
from physgen.io import write_json
from physgen.policies.ppo_core import (ActorCritic, Learner, RunningStats, Transition, act, make_optimizer,
                                       normalize_obs, update)
from physgen.seeds import EVALUATION


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """PPO hyper-parameters; `total_steps`, `num_envs` and `rollout_steps` count per seed."""

    total_steps: int = 1_000_000
    num_envs: int = 1
    rollout_steps: int = 2048
    epochs: int = 10
    minibatches: int = 32
    lr: float = 3e-4
    anneal_lr: bool = True
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip: float = 0.2
    clip_value_loss: bool = True
    value_coef: float = 0.5
    entropy_coef: float = 0.0
    max_grad_norm: float = 0.5
    hidden: tuple[int, ...] = (64, 64)
    normalize_obs: bool = True
    normalize_reward: bool = True
    obs_clip: float = 10.0
    reward_clip: float = 10.0
    eval_episodes: int = 10
    checkpoint_every: int = 100_000

    @property
    def steps_per_update(self) -> int:
        return self.num_envs * self.rollout_steps

    @property
    def num_updates(self) -> int:
        return self.total_steps // self.steps_per_update

    def validate(self) -> "PPOConfig":
        if self.num_updates < 1:
            raise PhysgenError(f"total_steps {self.total_steps} is below one rollout ({self.steps_per_update} steps = "
                               "num_envs x rollout_steps); raise --steps")
        if self.steps_per_update % self.minibatches:
            raise PhysgenError(f"num_envs x rollout_steps ({self.steps_per_update}) must divide into "
                               f"{self.minibatches} minibatches; change minibatches or rollout_steps")
        return self

    @classmethod
    def from_dict(cls, values: dict) -> "PPOConfig":
        return cls(**{**values, "hidden": tuple(values["hidden"])})


def _network(task: Task, config: PPOConfig, key) -> ActorCritic:
    return ActorCritic(task.obs_dim, task.act_dim, tuple(config.hidden), nnx.Rngs(key))


def _graphdef(task: Task, config: PPOConfig):
    return nnx.split(nnx.eval_shape(lambda: _network(task, config, 0)))[0]


def _bounds(task: Task):
    return jnp.asarray(task.action_space.low), jnp.asarray(task.action_space.high)


# ---------------------------------------------------------------- pure-JAX tasks: the whole run is one program


class Run(NamedTuple):
    """A PPO run in a pure-JAX environment between updates: the learner and its environments."""

    learner: Learner
    env_state: Any
    obs: jax.Array  # (num_envs, obs_dim) raw
    episode_return: jax.Array  # (num_envs,)


def step_envs(fns: FunctionalEnv, env_state, action: jax.Array, key: jax.Array):
    """Step every environment of `fns` and start a new episode (from `key`) in those whose episode ended:
    (the step's `TimeStep`, done, the next states, the next observations, the new episodes' observations)."""
    out = jax.vmap(fns.step)(env_state, action)
    done = out.terminated | out.truncated
    fresh_state, fresh_obs = jax.vmap(fns.reset)(jax.random.split(key, done.shape[0]))
    env_state = jax.tree.map(lambda a, b: jnp.where(done.reshape(-1, *[1] * (a.ndim - 1)), a, b),
                             fresh_state, out.state)
    return out, done, env_state, jnp.where(done[:, None], fresh_obs, out.obs), fresh_obs


def reset_envs(fns: FunctionalEnv, config: PPOConfig, run: Run, key: jax.Array) -> Run:
    """`run` with every environment starting a new episode (in `fns`, which may be a new model)."""
    env_state, obs = jax.vmap(fns.reset)(jax.random.split(key, config.num_envs))
    return run._replace(env_state=env_state, obs=obs, episode_return=jnp.zeros(config.num_envs))


def new_learner(task: Task, config: PPOConfig, key: jax.Array, num_updates: int | None = None) -> Learner:
    """A fresh learner, its learning rate annealed over `num_updates` (default: the config's)."""
    optimizer = make_optimizer(config, num_updates or config.num_updates)
    init_key, key = jax.random.split(key)
    params = nnx.split(_network(task, config, init_key))[1]
    return Learner(params, optimizer.init(params), RunningStats.create((task.obs_dim,)), RunningStats.create(),
                   jnp.zeros(config.num_envs), key)


def start_in(fns: FunctionalEnv, task: Task, config: PPOConfig, learner_key: jax.Array, reset_key: jax.Array,
             num_updates: int | None = None) -> Run:
    """A fresh learner (as `new_learner`) and fresh episodes in `fns`."""
    return reset_envs(fns, config, Run(new_learner(task, config, learner_key, num_updates), None, None, None),
                      reset_key)


def updates_in(fns: FunctionalEnv, task: Task, config: PPOConfig, run: Run, keys: jax.Array,
               num_updates: int | None = None):
    """One PPO update per key in `fns`, continuing `run`: (run, per-update mean finished-episode return, metrics).
    `num_updates` is what the learning rate anneals over, as in `start_in`."""
    graphdef = _graphdef(task, config)
    optimizer = make_optimizer(config, num_updates or config.num_updates)
    low, high = _bounds(task)

    def env_step(run: Run, step_key):
        learner = run.learner
        obs_stats, key, obs, action, log_prob, value = act(graphdef, learner.params, learner.obs_stats,
                                                           learner.key, run.obs, config)
        learner = learner._replace(obs_stats=obs_stats, key=key)
        out, done, env_state, next_obs, _ = step_envs(fns, run.env_state, jnp.clip(action, low, high), step_key)
        episode_return = run.episode_return + out.reward
        finished = (jnp.where(done, episode_return, 0.0).sum(), done.sum())
        run = Run(learner, env_state, next_obs, jnp.where(done, 0.0, episode_return))
        return run, (Transition(obs, action, log_prob, value, out.reward, out.terminated, done, out.obs), finished)

    def one_update(run: Run, update_key):
        run, (rollout, (return_sum, count)) = jax.lax.scan(
            env_step, run, jax.random.split(update_key, config.rollout_steps))
        learner, metrics = update(graphdef, optimizer, run.learner, rollout, config)
        mean_return = jnp.where(count.sum() > 0, return_sum.sum() / jnp.maximum(count.sum(), 1), jnp.nan)
        return run._replace(learner=learner), (mean_return, metrics)

    run, (curve, metrics) = jax.lax.scan(one_update, run, keys)
    return run, curve, metrics


def sample_actions(task: Task, config: PPOConfig, learner: Learner, raw_obs: jax.Array, key: jax.Array) -> jax.Array:
    """Actions the learner's Gaussian policy samples for `raw_obs` (envs, obs_dim), clipped to the task's bounds;
    the learner is left as it is (for collecting data it does not train on)."""
    low, high = _bounds(task)
    action = act(_graphdef(task, config), learner.params, learner.obs_stats, key, raw_obs, config)[3]
    return jnp.clip(action, low, high)


@partial(jax.jit, static_argnums=(0, 1))
def _start_functional(task: Task, config: PPOConfig, keys: jax.Array):
    """Fresh runs in the task's own pure-JAX environment, one per key, and each run's update keys."""
    def one(key):
        learner_key, reset_key, key = jax.random.split(key, 3)
        run = start_in(task.functional, task, config, learner_key, reset_key)
        return run, jax.random.split(key, config.num_updates)

    return jax.vmap(one)(keys)


@partial(jax.jit, static_argnums=(0, 1))
def _updates_functional(task: Task, config: PPOConfig, runs: Run, keys: jax.Array):
    return jax.vmap(partial(updates_in, task.functional, task, config))(runs, keys)


def _train_functional(task: Task, config: PPOConfig, seeds: list[int], callback, mesh):
    """Train one learner per seed in the task's own pure-JAX environment, in equal compiled stretches of about
    `checkpoint_every` steps when there is a `callback` to call between them (one stretch otherwise); the seeds
    spread over `mesh` (`physgen.devices`)."""
    n = len(seeds)
    keys = placed_seeds(jnp.stack([jax.random.key(s) for s in seeds]), mesh)
    runs, update_keys = on_each_device(partial(_start_functional, task, config), mesh, keys)
    total = config.num_updates * config.steps_per_update
    stretches = (min(config.num_updates, max(1, round(total / config.checkpoint_every)))
                 if callback and config.checkpoint_every else 1)
    bounds = np.linspace(0, config.num_updates, stretches + 1).astype(int)
    curves = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        runs, curve, metrics = on_each_device(
            lambda runs, keys: _updates_functional(task, config, runs, keys[:, lo:hi]), mesh, runs, update_keys)
        curves.append(gathered(curve)[:n])
        if callback is not None and hi < config.num_updates:  # the last one follows training
            callback(int(hi) * config.steps_per_update, first_seeds(runs.learner, n, mesh))
    return first_seeds(runs.learner, n, mesh), np.concatenate(curves, axis=1), first_seeds(gathered(metrics), n)


# ---------------------------------------------------------------- Gymnasium tasks: Python steps the vector env


def _gym_rollout(task, config, act_all, learners, envs, raw_obs, episode_returns, finished):
    """Step `envs` (seeds x envs) for one rollout; appends finished episode returns per seed to `finished`."""
    seeds, n = len(finished), config.num_envs
    low, high = task.action_space.low, task.action_space.high
    obs_stats, key = learners.obs_stats, learners.key
    steps = []
    for _ in range(config.rollout_steps):
        obs_stats, key, *sampled = act_all(learners.params, obs_stats, key, raw_obs)
        obs, action, log_prob, value = jax.device_get(sampled)  # (seeds, envs, ...)
        next_obs, reward, terminated, truncated, info = envs.step(np.clip(action.reshape(seeds * n, -1), low, high))
        done = terminated | truncated
        final_obs = next_obs.copy()
        if done.any():
            final_obs[done] = np.stack(info["final_obs"][done])
        episode_returns += reward
        for i in np.flatnonzero(done):
            finished[i // n].append(float(episode_returns[i]))
        episode_returns[done] = 0.0
        per_seed = (x.reshape(seeds, n, *x.shape[1:]) for x in (reward, terminated, done, final_obs))
        steps.append((obs, action, log_prob, value, *per_seed))
        raw_obs = next_obs.reshape(seeds, n, -1).astype(np.float32)
    learners = learners._replace(obs_stats=obs_stats, key=key)
    # (seeds, T, envs, ...): time-major per seed
    columns = [jnp.asarray(np.stack(column, axis=1)) for column in zip(*steps)]
    rollout = Transition(*columns[:4], columns[4].astype(jnp.float32), *columns[5:7],
                         columns[7].astype(jnp.float32))
    return learners, rollout, raw_obs


def _train_gym(task: Task, config: PPOConfig, seeds: list[int], out_dir: Path | None, progress: bool, callback):
    graphdef = _graphdef(task, config)
    optimizer = make_optimizer(config, config.num_updates)
    learners = jax.jit(jax.vmap(partial(new_learner, task, config)))(jnp.stack([jax.random.key(s) for s in seeds]))
    act_all = jax.jit(jax.vmap(partial(act, graphdef, config=config)))
    update_all = jax.jit(jax.vmap(partial(update, graphdef, optimizer, config=config)))

    n = config.num_envs
    envs = gym.vector.SyncVectorEnv([task.make_env] * (len(seeds) * n),
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    reset_seeds = [int(x) for s in seeds for x in episode_seeds(s, n)]
    raw_obs = envs.reset(seed=reset_seeds)[0].reshape(len(seeds), n, -1).astype(np.float32)
    episode_returns = np.zeros(len(seeds) * n)
    curve = []
    next_checkpoint = config.checkpoint_every
    start = time.perf_counter()
    columns = (TextColumn(f"PPO {len(seeds)} seed(s)"), BarColumn(), MofNCompleteColumn(),
               TextColumn("return {task.fields[ret]}"), TimeRemainingColumn())
    with Progress(*columns, disable=not progress) as bar:
        job = bar.add_task("ppo", total=config.num_updates * config.steps_per_update, ret="-")
        for index in range(config.num_updates):
            finished = [[] for _ in seeds]
            learners, rollout, raw_obs = _gym_rollout(task, config, act_all, learners, envs, raw_obs,
                                                      episode_returns, finished)
            learners, metrics = update_all(learners, rollout)
            env_steps = (index + 1) * config.steps_per_update
            curve.append({"env_steps": env_steps, "wall_s": time.perf_counter() - start,
                          "mean_return": [float(np.mean(f)) if f else None for f in finished]})
            returns = [r for r in curve[-1]["mean_return"] if r is not None]
            bar.update(job, advance=config.steps_per_update, ret=f"{np.mean(returns):.1f}" if returns else "-")
            if config.checkpoint_every and env_steps >= next_checkpoint:
                if out_dir is not None:
                    _save_all(out_dir / "steps" / str(env_steps), task, config, seeds, learners, env_steps)
                    write_json(out_dir / "curve.json", curve)
                if callback is not None and index + 1 < config.num_updates:  # the last one follows training
                    callback(env_steps, learners)
                next_checkpoint += config.checkpoint_every
    envs.close()
    return learners, curve, metrics


# ---------------------------------------------------------------- policies, evaluation, checkpoints


class GaussianAgent(NamedTuple):
    """PPO's policy as an agent (`physgen.envs.rollout.Agent`): the Gaussian's mean, clipped to the action bounds.
    Its parameters are (network parameters, observation normaliser); it keeps no carry."""

    graphdef: nnx.GraphDef
    obs_clip: float
    low: tuple[float, ...]
    high: tuple[float, ...]

    @classmethod
    def for_task(cls, task: Task, config: PPOConfig) -> "GaussianAgent":
        return cls(_graphdef(task, config), config.obs_clip, *(tuple(map(float, b)) for b in _bounds(task)))

    def start(self, params, obs: jax.Array) -> tuple:
        return ()

    def act(self, params, carry: tuple, obs: jax.Array, key: jax.Array) -> tuple[jax.Array, tuple]:
        network, normalizer = params
        mean = nnx.merge(self.graphdef, network)(normalize_obs(normalizer, obs, self.obs_clip))[0]
        return jnp.clip(mean, jnp.asarray(self.low), jnp.asarray(self.high)), carry


def deterministic_policy(task: Task, config: PPOConfig, params, normalizer: Normalizer) -> Callable:
    """numpy observations -> numpy actions (a batch, or one): the agent's actions (jitted)."""
    agent = GaussianAgent.for_task(task, config)
    act = jax.jit(lambda obs: agent.act((params, normalizer), (), obs, None)[0])
    return lambda obs: np.asarray(act(jnp.asarray(obs, jnp.float32)))


def evaluate(task: Task, config: PPOConfig, learners: Learner, seeds: list[int], episodes: int) -> np.ndarray:
    """Returns (seeds, episodes) of every seed's deterministic policy; seed s on `episode_seeds(s + EVALUATION, n)`,
    episodes unseen in training."""
    agent, params = GaussianAgent.for_task(task, config), agent_params(learners)
    return np.stack([record_episodes(task, agent, jax.tree.map(lambda x: x[i : i + 1], params),
                                     episode_seeds(seed + EVALUATION, episodes))[2][0].sum(-1)
                     for i, seed in enumerate(seeds)])


def agent_params(learners: Learner) -> tuple:
    """The `GaussianAgent` parameters of learners stacked over seeds (stacked too)."""
    return learners.params, jax.vmap(RunningStats.normalizer)(learners.obs_stats)


def learner_of(learners: Learner, i: int) -> tuple:
    """(parameters, observation normaliser) of seed `i` of learners stacked over seeds."""
    return (jax.tree.map(lambda x: x[i], learners.params),
            jax.tree.map(lambda x: x[i], learners.obs_stats).normalizer())


def save_ppo(path: str | Path, task: Task, config: PPOConfig, params, normalizer: Normalizer, **meta) -> Path:
    """Write one PPO checkpoint: parameters, observation normaliser, config and `meta` (e.g. seed, env_steps)."""
    return save_checkpoint(path, {"params": nnx.to_pure_dict(params), "obs_normalizer": normalizer._asdict()},
                           {"method": "ppo", "task": task.name, "config": config, **meta})


def _save_all(folder: Path, task: Task, config: PPOConfig, seeds: list[int], learners: Learner, env_steps: int):
    for i, seed in enumerate(seeds):
        save_ppo(folder / f"seed_{seed}", task, config, *learner_of(learners, i), seed=seed, env_steps=env_steps)


def train_ppo(task: Task, config: PPOConfig, seeds: list[int], out_dir: str | Path | None = None,
              progress: bool = True, callback=None, devices: int | str | None = None) -> dict:
    """Train one policy per seed, all together; with `out_dir`, write `out_dir/seed_<s>` checkpoints.

    Returns {"task", "seeds", "config", "eval_returns" (per seed, a list over `config.eval_episodes` deterministic
    episodes), "curve" (rows {"env_steps", "mean_return": per-seed mean return of the training episodes that ended
    in that rollout; Gymnasium tasks add "wall_s", seconds since the first rollout began}), "metrics" (the last
    update's losses per seed)}. Gymnasium tasks also write `out_dir/steps/<k>/seed_<s>` every `checkpoint_every`
    env steps and `out_dir/curve.json`; `out_dir/result.json` holds the returned dict. `callback(env_steps,
    learners)`, if given, gets the learners (stacked over seeds) every `checkpoint_every` env steps and after the
    last update (a pure-JAX task then trains in compiled stretches between those points). `devices` spreads a
    pure-JAX task's seeds over devices as `physgen.policies.train_policies` does (`physgen.devices`); a Gymnasium
    task trains on one device, its time going to the environments stepped on the host.
    """
    config = config.validate()
    if not seeds or len(set(seeds)) != len(seeds):
        raise PhysgenError(f"seeds must be distinct and at least one, got {seeds}")
    out_dir = Path(out_dir) if out_dir is not None else None
    if task.functional is not None:
        learners, curve_array, metrics = _train_functional(task, config, seeds, callback,
                                                           fit_mesh(seed_mesh(devices), len(seeds)))
        curve = [{"env_steps": (u + 1) * config.steps_per_update,
                  "mean_return": [None if np.isnan(v) else float(v) for v in curve_array[:, u]]}
                 for u in range(config.num_updates)]
        metrics = jax.tree.map(lambda x: x[:, -1], metrics)
    else:
        learners, curve, metrics = _train_gym(task, config, seeds, out_dir, progress, callback)
    if callback is not None:
        callback(config.num_updates * config.steps_per_update, learners)
    eval_returns = (evaluate(task, config, learners, seeds, config.eval_episodes).tolist() if config.eval_episodes
                    else [[] for _ in seeds])
    result = {"task": task.name, "seeds": list(seeds), "config": dataclasses.asdict(config),
              "eval_returns": eval_returns, "curve": curve,
              "metrics": jax.tree.map(lambda x: np.asarray(x).tolist(), metrics)}
    if out_dir is not None:
        _save_all(out_dir, task, config, seeds, learners, config.num_updates * config.steps_per_update)
        write_json(out_dir / "result.json", result)
    return result


def load_ppo(path: str | Path, task: str | None = None) -> tuple[Task, PPOConfig, nnx.State, Normalizer, dict]:
    """(task, config, params, observation normaliser, meta) of a PPO checkpoint."""
    arrays, meta = load_checkpoint(path, task)
    if meta["method"] != "ppo":
        raise PhysgenError(f"{path} is a {meta['method']!r} checkpoint, not a PPO one; load it with its own method")
    task_obj, config = get_task(meta["task"]), PPOConfig.from_dict(meta["config"])
    params = nnx.split(nnx.eval_shape(lambda: _network(task_obj, config, 0)))[1]
    nnx.replace_by_pure_dict(params, arrays["params"])  # it turns orbax's string keys back into ints
    params = jax.tree.map(jnp.asarray, params)
    normalizer = Normalizer(**{k: jnp.asarray(v) for k, v in arrays["obs_normalizer"].items()})
    return task_obj, config, params, normalizer, meta


def load_ppo_policy(path: str | Path) -> Callable[[np.ndarray], np.ndarray]:
    """The deterministic policy of a PPO checkpoint: numpy observation -> numpy action (mean, clipped; jitted)."""
    task, config, params, normalizer, _ = load_ppo(path)
    return deterministic_policy(task, config, params, normalizer)


def train_from_cli(task_name: str, seeds: list[int], steps: int | None, out: str,
                   overrides: dict[str, str] | None = None, devices: int | str | None = None) -> str:
    """`physgen train --method ppo`: train `seeds` together, write checkpoints under `out`, summarise in text."""
    task = get_task(task_name)
    config = PPOConfig() if steps is None else PPOConfig(total_steps=steps)
    config = PPOConfig.from_dict(override(dataclasses.asdict(config), overrides or {})).validate()
    result = train_ppo(task, config, seeds, out_dir=out, devices=devices)
    means = [float(np.mean(r)) for r in result["eval_returns"]]
    lines = [f"PPO on {task.name}: {config.num_updates * config.steps_per_update:,} env steps per seed, "
             f"checkpoints in {out}/seed_<s>"]
    lines += [f"  seed {s}: mean return {m:.1f} over {config.eval_episodes} deterministic episodes"
              for s, m in zip(seeds, means)]
    return "\n".join(lines)
