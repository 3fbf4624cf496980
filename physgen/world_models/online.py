"""`ppo-wm`: PPO with a world model, learned online (DreamerV3's loop with physgen's PPO as the actor-critic).

Each iteration trains the RSSM on windows of a replay buffer, runs PPO updates inside the RSSM (`dream_env`), its
imagined episodes starting from posterior states of the replay, and collects real steps with the improved policy
into the replay (the first collection, with the initial policy, comes before the first iteration). The RSSM
therefore learns the states its own policy visits. By default the replay starts with the task's expert data
(`offline_start`). On pure-JAX tasks the whole loop is one compiled program per stretch between curve points, seeds
vmapped; on Gymnasium tasks the environments of every seed step in lockstep from Python (`GymCollector`) and the
learning is compiled.

The replay holds frames (`Frames`) in the order they arrived: per iteration and real environment, the
observation it was in (marked `first`: what came before is another iteration's), then per step the observation the
step arrived at and, after an episode ended, the reset observation (a `first` frame).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, NamedTuple

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np

from physgen.configs import check
from physgen.envs import Task
from physgen.envs.rollout import episode_seeds
from physgen.errors import PhysgenError
from physgen.policies.ppo import PPOConfig, Run, new_learner, reset_envs, sample_actions, step_envs, updates_in
from physgen.policies.ppo_core import Learner
from physgen.world_models.data import Frames, frames_from, sample_frames
from physgen.world_models.dream import DreamConfig, dream_env, dream_starts
from physgen.world_models.rssm import RSSM, RSSMConfig, fit_scales
from physgen.world_models.train import TrainState, abstract_model, gradient_step, initial_states


@dataclass(frozen=True)
class OnlineConfig:
    """How real experience and learning interleave; counts are per seed."""

    real_steps: int = 200_000  # real environment steps
    envs: int = 16  # real environments stepped in lockstep
    collect_steps: int = 64  # steps of each real environment per iteration
    model_steps: int = 32  # RSSM gradient steps per iteration
    dream_updates: int = 8  # PPO updates inside the RSSM per iteration
    offline_start: bool = True  # the replay starts with the task's expert data (what the offline methods learn from)
    curve_points: int = 1  # stretches of iterations, a callback after each (the bench evaluates there)

    def __post_init__(self):
        check(self, positive=("envs", "collect_steps", "model_steps", "dream_updates"))
        if self.iterations < 1:
            raise PhysgenError(f"real_steps {self.real_steps} is below one iteration ({self.steps_per_iteration} "
                               "steps = envs x collect_steps); raise real_steps")
        if not 1 <= self.curve_points <= self.iterations:
            raise PhysgenError(f"curve_points must be 1 to the {self.iterations} iterations, got {self.curve_points}")

    @property
    def steps_per_iteration(self) -> int:
        return self.envs * self.collect_steps

    @property
    def iterations(self) -> int:
        return self.real_steps // self.steps_per_iteration

    @property
    def frames_per_iteration(self) -> int:
        """The most frames one iteration adds: a start frame per environment, then per step an arrival and a reset."""
        return self.envs * (1 + 2 * self.collect_steps)


class Setup(NamedTuple):
    """The static half of an online run: what is compiled."""

    task: Task
    model: RSSM
    ppo: PPOConfig
    dream: DreamConfig
    online: OnlineConfig


class Learning(NamedTuple):
    """One seed's online run between iterations."""

    model: TrainState
    learner: Learner  # PPO's
    env_state: Any  # the real environments (pure-JAX tasks; a Gymnasium task's are the `GymCollector`'s)
    obs: jax.Array  # (envs, obs_dim), as `env_state`
    episode_return: jax.Array  # (envs,) each real episode's return so far (episodes outlast a collection), as `obs`
    replay: Frames  # (capacity, ...), filled up to `size`
    size: jax.Array


class Iteration(NamedTuple):
    """What one iteration measured, per seed."""

    real_return: jax.Array  # mean return of the real episodes that ended (nan when none)
    model_loss: jax.Array  # mean RSSM loss over the iteration's gradient steps
    dream_return: jax.Array  # mean return of the imagined episodes that ended (nan when none)


def _lay(first: jax.Array, arrived: jax.Array, restarted: jax.Array) -> jax.Array:
    """Frames in arrival order, (envs * (1 + 2T), ...): per environment its `first` (envs, ...), then per step the
    arrival and the restart (each (T, envs, ...))."""
    steps = jnp.stack([arrived, restarted], axis=1)  # (T, 2, envs, ...)
    envs, length = first.shape[0], 2 * arrived.shape[0]
    steps = jnp.moveaxis(steps, 2, 0).reshape(envs, length, *first.shape[1:])
    return jnp.concatenate([first[:, None], steps], axis=1).reshape(-1, *first.shape[1:])


def _segment(start_obs, actions, rewards, terminated, arrived_obs, restart_obs, done) -> tuple[Frames, jax.Array]:
    """One collection (arrays (T, envs, ...) but the start observations (envs, obs_dim)) as frames and which of them
    to keep (the restarts of episodes that went on are not)."""
    envs, steps = start_obs.shape[0], done.shape[0]
    zeros = jnp.zeros(done.shape)
    start = Frames(start_obs, jnp.zeros((envs, actions.shape[-1])), jnp.zeros(envs), jnp.zeros(envs),
                   jnp.ones(envs, bool))
    arrival = Frames(arrived_obs, actions, rewards, terminated.astype(jnp.float32), jnp.zeros(done.shape, bool))
    restart = Frames(restart_obs, jnp.zeros_like(actions), zeros, zeros, jnp.ones(done.shape, bool))
    kept = _lay(jnp.ones(envs, bool), jnp.ones((steps, envs), bool), done)
    return jax.tree.map(_lay, start, arrival, restart), kept


def append(learning: Learning, segment: Frames, kept: jax.Array) -> Learning:
    """`learning` with the `kept` frames of `segment` appended to its replay."""
    capacity = learning.replay.first.shape[0]
    position = jnp.where(kept, learning.size + jnp.cumsum(kept) - 1, capacity)  # dropped: past the end
    replay = jax.tree.map(lambda buffer, new: buffer.at[position].set(new.astype(buffer.dtype), mode="drop"),
                          learning.replay, segment)
    return learning._replace(replay=replay, size=learning.size + kept.sum())


def _recorded(learning: Learning, start_obs, actions, rewards, terminated, arrived, fresh, done, returns):
    """`learning` with one collection's frames appended (`_segment`), and the mean return of the episodes that ended
    in it (`returns`: theirs where `done`, nan when none ended)."""
    count = done.sum()
    return (append(learning, *_segment(start_obs, actions, rewards, terminated, arrived, fresh, done)),
            jnp.where(count > 0, returns.sum() / jnp.maximum(count, 1), jnp.nan))


def collect(setup: Setup, learning: Learning, key: jax.Array) -> tuple[Learning, jax.Array]:
    """Step the pure-JAX environments `collect_steps` times with the current policy and append the frames to the
    replay: (learning, mean return of the episodes that ended)."""
    task, online = setup.task, setup.online
    fns, learner = task.functional, learning.learner

    def one(carry, step_key):
        env_state, obs, episode_return = carry
        k_act, k_reset = jax.random.split(step_key)
        action = sample_actions(task, setup.ppo, learner, obs, k_act)
        out, done, env_state, next_obs, fresh_obs = step_envs(fns, env_state, action, k_reset)
        episode_return = episode_return + out.reward
        carry = (env_state, next_obs, jnp.where(done, 0.0, episode_return))
        return carry, (action, out.reward, out.terminated, out.obs, fresh_obs, done,
                       jnp.where(done, episode_return, 0.0))

    (env_state, obs, episode_return), (actions, rewards, terminated, arrived, fresh, done, returns) = jax.lax.scan(
        one, (learning.env_state, learning.obs, learning.episode_return), jax.random.split(key, online.collect_steps))
    learning, real_return = _recorded(learning, learning.obs, actions, rewards, terminated, arrived, fresh, done,
                                      returns)
    return learning._replace(env_state=env_state, obs=obs, episode_return=episode_return), real_return


class GymCollector:
    """The Gymnasium environments of every seed (seeds x envs), stepped in lockstep from Python with the policies
    sampling in one compiled call per step; the episodes start from PPO's environment seeds."""

    def __init__(self, setup: Setup, seeds: list[int]):
        task, self.online, self.seeds = setup.task, setup.online, len(seeds)
        self.envs = gym.vector.SyncVectorEnv([task.make_env] * (self.seeds * self.online.envs),
                                             autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
        self.obs = self.envs.reset(seed=[int(x) for s in seeds for x in episode_seeds(s, self.online.envs)])[0]
        self.episode_return = np.zeros(len(self.obs))
        self.sample = jax.jit(jax.vmap(partial(sample_actions, task, setup.ppo)))

    def collect(self, learning: Learning, keys: jax.Array) -> tuple[Learning, np.ndarray]:
        """Every seed's `collect_steps` steps appended to its replay (`keys`: one per seed): (learning, mean return
        per seed of the episodes that ended)."""
        shape = (self.seeds, self.online.envs)
        start, columns = self.obs.astype(np.float32), []
        for step_keys in jax.vmap(jax.random.split, in_axes=(0, None), out_axes=1)(keys, self.online.collect_steps):
            action = np.asarray(self.sample(learning.learner, jnp.asarray(self.obs.reshape(*shape, -1), jnp.float32),
                                            step_keys)).reshape(len(self.obs), -1)
            obs, reward, terminated, truncated, info = self.envs.step(action)
            done = terminated | truncated
            arrived = obs.copy()
            if done.any():
                arrived[done] = np.stack(info["final_obs"][done])
            self.episode_return += reward
            columns.append((action, reward, terminated, arrived, obs, done, np.where(done, self.episode_return, 0.0)))
            self.episode_return[done] = 0.0
            self.obs = obs
        per_seed = [np.stack(c).reshape(len(columns), *shape, *np.shape(c[0])[1:]).swapaxes(0, 1).astype(
            np.float32 if np.asarray(c[0]).dtype.kind == "f" else bool) for c in zip(*columns)]
        learning, returns = _append_all(learning, start.reshape(*shape, -1), *per_seed)
        return learning, np.asarray(returns)

    def close(self) -> None:
        self.envs.close()


_append_all = jax.jit(jax.vmap(_recorded))


def learn(setup: Setup, learning: Learning, key: jax.Array) -> tuple[Learning, jax.Array, jax.Array]:
    """Train the RSSM on the replay, then PPO inside it: (learning, mean RSSM loss, mean imagined return)."""
    model, online = setup.model, setup.online
    k_model, k_starts, k_reset, k_policy = jax.random.split(key, 4)
    step = gradient_step(model)[1]

    def model_step(state, step_key):
        k_batch, k_loss = jax.random.split(step_key)
        batch = sample_frames(learning.replay, k_batch, model.config.optim.batch_size, model.config.sequence_length,
                              learning.size)
        return step(state, batch, k_loss)

    state, metrics = jax.lax.scan(model_step, learning.model, jax.random.split(k_model, online.model_steps))
    starts = dream_starts(model, state.params, learning.replay, setup.dream, k_starts, learning.size)
    fns = dream_env(model, state.params, starts, setup.dream)
    policy = reset_envs(fns, setup.ppo, Run(learning.learner, None, None, None), k_reset)  # fresh imagined episodes
    policy, dream_return, _ = updates_in(fns, setup.task, setup.ppo, policy,
                                         jax.random.split(k_policy, online.dream_updates),
                                         online.iterations * online.dream_updates)
    return learning._replace(model=state, learner=policy.learner), metrics["loss"].mean(), jnp.nanmean(dream_return)


def iterate(setup: Setup, learning: Learning, key: jax.Array, more: jax.Array) -> tuple[Learning, Iteration]:
    """One iteration for one seed: learn from the replay, then (when `more` iterations follow) collect with the
    improved policy. The first collection happens before the first iteration."""
    k_learn, k_collect = jax.random.split(key)
    learning, model_loss, dream_return = learn(setup, learning, k_learn)
    collected, real_return = collect(setup, learning, k_collect)
    learning = jax.tree.map(lambda new, old: jnp.where(more, new, old), collected, learning)
    return learning, Iteration(jnp.where(more, real_return, jnp.nan), model_loss, dream_return)


def _chunk(setup: Setup, learning: Learning, keys: jax.Array, more: jax.Array, active: jax.Array):
    """`keys.shape[1]` iterations of every seed (keys: (seeds, iterations); more, active: (iterations,)). The
    inactive ones are skipped (their measurements nan), so stretches of unequal length share one compiled program."""
    skipped = Iteration(*[jnp.float32(jnp.nan)] * 3)

    def step(learning, x):
        key, go_on, run = x  # `run` is the same for every seed, so the cond stays a branch under vmap
        return jax.lax.cond(run, partial(iterate, setup), lambda learning, *_: (learning, skipped), learning, key,
                            go_on)

    return jax.vmap(lambda learning, keys: jax.lax.scan(step, learning, (keys, more, active)))(learning, keys)


_chunk = jax.jit(_chunk, static_argnums=0)
_collect = jax.jit(collect, static_argnums=0)


class OnlineResult(NamedTuple):
    """Seeds stacked on the leading axis; `history` fields are (seeds, iterations)."""

    model: RSSM
    model_params: Any
    learners: Any
    history: Iteration
    seconds: float


def start_learning(setup: Setup, offline: Frames | None, key: jax.Array) -> Learning:
    """A seed's run before its first collection: a fresh policy, the real environments (pure-JAX tasks) and an
    empty replay (holding `offline` first, when given); the RSSM state is the caller's."""
    task, online = setup.task, setup.online
    k_policy, k_envs = jax.random.split(key)
    learner = new_learner(task, setup.ppo, k_policy, online.iterations * online.dream_updates)
    if task.functional is None:  # a Gymnasium task's environments and episode returns are the `GymCollector`'s
        env_state = obs = episode_return = None
    else:
        env_state, obs = jax.vmap(task.functional.reset)(jax.random.split(k_envs, online.envs))
        episode_return = jnp.zeros(online.envs)
    held = 0 if offline is None else offline.first.shape[0]
    capacity = held + online.iterations * online.frames_per_iteration
    replay = Frames(jnp.zeros((capacity, task.obs_dim)), jnp.zeros((capacity, task.act_dim)), jnp.zeros(capacity),
                    jnp.zeros(capacity), jnp.zeros(capacity, bool))
    if offline is not None:
        replay = jax.tree.map(lambda buffer, x: buffer.at[:held].set(x.astype(buffer.dtype)), replay, offline)
    return Learning(None, learner, env_state, obs, episode_return, replay, jnp.int32(held))


def train_online(task: Task, rssm: RSSMConfig, ppo: PPOConfig, dream: DreamConfig, online: OnlineConfig,
                 seeds: list[int], offline=None,
                 callback: Callable[[int, OnlineResult], None] | None = None) -> OnlineResult:
    """Online PPO with a world model, one run per seed, seeds vmapped.

    `offline` (`Trajectories`) goes into the replay first when `online.offline_start`. The RSSM's scales are
    fitted on the first collection of every seed (and `offline`). `callback(real_steps, result)` runs after each of
    `online.curve_points` equal stretches of iterations."""
    if online.offline_start and offline is None:
        raise PhysgenError("offline_start needs the expert data; pass offline=")
    ppo = ppo.validate()
    begin = time.perf_counter()
    offline_frames = frames_from(offline) if online.offline_start else None
    keys = [jax.random.split(jax.random.key(s), 3) for s in seeds]  # RSSM init, the run's start, its iterations
    # the scales are fitted before the model exists: on each seed's first collection with its initial policy
    provisional = Setup(task, abstract_model(RSSMConfig(), task.obs_dim, task.act_dim)[0], ppo, dream, online)
    starts = [start_learning(provisional, offline_frames, k[1]) for k in keys]
    first_keys = [jax.random.fold_in(k[1], 1) for k in keys]
    gym_envs = None if task.functional is not None else GymCollector(provisional, seeds)
    if gym_envs is None:
        learning = _stack([_collect(provisional, start, key)[0] for start, key in zip(starts, first_keys)])
    else:
        learning = gym_envs.collect(_stack(starts), jnp.stack(first_keys))[0]
    seen = [jax.tree.map(lambda x: np.asarray(x[i, : int(learning.size[i])]), learning.replay)
            for i in range(len(seeds))]
    config = fit_scales(rssm, Frames(*(np.concatenate(column) for column in zip(*seen))))
    model = abstract_model(config, task.obs_dim, task.act_dim)[0]
    setup = Setup(task, model, ppo, dream, online)
    learning = learning._replace(model=initial_states(model, jnp.stack([k[0] for k in keys])))
    iteration_keys = jnp.stack([jax.random.split(k[2], online.iterations) for k in keys])
    more = jnp.arange(online.iterations) < online.iterations - 1
    bounds = np.linspace(0, online.iterations, online.curve_points + 1).astype(int)
    width = int(np.diff(bounds).max())  # every stretch runs as `width` iterations, the last few skipped if shorter
    history = []
    try:
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            if gym_envs is None:
                span = np.arange(lo, lo + width)
                padded = np.minimum(span, online.iterations - 1)
                learning, measured = _chunk(setup, learning, iteration_keys[:, padded], more[padded],
                                            jnp.asarray(span < hi))
                measured = jax.tree.map(lambda x: x[:, : hi - lo], measured)
            else:
                learning, measured = _gym_stretch(setup, gym_envs, learning, iteration_keys[:, lo:hi], more[lo:hi])
            history.append(jax.device_get(measured))
            if not np.all(np.isfinite(history[-1].model_loss)):
                raise PhysgenError(f"the RSSM diverged after {hi} iterations; lower rssm.learning_rate or grad_clip")
            result = OnlineResult(model, learning.model.params, learning.learner,
                                  Iteration(*(np.concatenate(c, axis=1) for c in zip(*history))),
                                  time.perf_counter() - begin)
            if callback is not None:
                callback(int(hi) * online.steps_per_iteration, result)
    finally:
        if gym_envs is not None:
            gym_envs.close()
    return result


def _stack(trees: list):
    return jax.tree.map(lambda *x: jnp.stack(x), *trees)


@partial(jax.jit, static_argnums=0)
def _learn_all(setup: Setup, learning: Learning, keys: jax.Array):
    return jax.vmap(partial(learn, setup))(learning, keys)


def _gym_stretch(setup: Setup, gym_envs: GymCollector, learning: Learning, keys: jax.Array, more: jax.Array):
    """`iterate` for a Gymnasium task: the learning compiled, the collection stepped from Python."""
    measured = []
    for step_keys, go_on in zip(jnp.swapaxes(keys, 0, 1), np.asarray(more)):
        k_learn, k_collect = jax.vmap(jax.random.split, out_axes=1)(step_keys)
        learning, model_loss, dream_return = _learn_all(setup, learning, k_learn)
        real_return = np.full(len(model_loss), np.nan)
        if go_on:
            learning, real_return = gym_envs.collect(learning, k_collect)
        measured.append(Iteration(real_return, np.asarray(model_loss), np.asarray(dream_return)))
    return learning, Iteration(*(np.stack(c, axis=1) for c in zip(*measured)))
