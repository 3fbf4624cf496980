"""Seeded rollouts of whole episodes: the rollout engine every agent is evaluated with (`run_episodes`), and the
recorders of the tasks' own experts for datasets (`rollout_jax`, `rollout_gym`; those experts read the simulator
state, so they are not agents). Pure-JAX tasks run under `vmap` + `lax.scan`, Gymnasium tasks in lockstep.

Episode `i` of a rollout with seed `s` resets from `episode_seeds(s, n)[i]`, the same integer a Gymnasium user
passes to `env.reset(seed=...)` to get the same initial state.
"""

from __future__ import annotations

from functools import cache, partial
from typing import Any, Callable, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from physgen.devices import (assembled, device_parts, first_seeds, fit_mesh, gathered, on_each_device, placed_seeds,
                             replicated, seed_mesh)
from physgen.envs.base import Task
from physgen.errors import PhysgenError


class Episode(NamedTuple):
    """One finished episode (numpy): T steps, T + 1 observations, per-step events."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminations: np.ndarray
    truncations: np.ndarray
    events: dict[str, np.ndarray]
    seed: int

    @property
    def length(self) -> int:
        return len(self.rewards)

    @property
    def episode_return(self) -> float:
        return float(np.sum(self.rewards, dtype=np.float64))


def episode_seeds(seed: int, episodes: int) -> np.ndarray:
    """Distinct 31-bit reset seeds for `episodes` episodes of a run seeded with `seed`."""
    return np.random.SeedSequence(seed).generate_state(episodes, np.uint32) >> 1


def episode_lengths(ended: np.ndarray, horizon: int) -> np.ndarray:
    """Steps of each recorded episode from its end flags (last axis): through its first end, or the whole horizon
    for one that never ends (argmax alone would give 1)."""
    return np.where(ended.any(-1), ended.argmax(-1) + 1, horizon)


def reset_key(seed) -> jax.Array:
    """The PRNG key a pure-JAX task resets from, given an episode seed."""
    return jax.random.key(seed)


# A JAX policy maps (env state, observation, key) to an action; it may read the state (the scripted experts do).
JaxPolicy = Callable[[object, jax.Array, jax.Array], jax.Array]


@cache
def expert_policy(task: Task) -> JaxPolicy:
    return lambda state, obs, key: task.functional.expert(state, key)


@cache
def random_policy(task: Task) -> JaxPolicy:
    low, high = task.action_space.low, task.action_space.high
    return lambda state, obs, key: jax.random.uniform(key, low.shape, minval=low, maxval=high)


@partial(jax.jit, static_argnums=(0, 1))
def scan_episodes(task: Task, policy: JaxPolicy, seeds: jax.Array):
    """Whole episodes of a pure-JAX task, padded to the horizon: (observations, actions, rewards, terminated,
    truncated, events, states), the simulator states (H + 1 of them) for those who render them."""
    fns = task.functional

    def episode(seed):
        key = reset_key(seed)
        state, obs = fns.reset(key)

        def one_step(carry, step_key):
            state, obs = carry
            action = policy(state, obs, step_key)
            out = fns.step(state, action)
            return (out.state, out.obs), (out.obs, action, out.reward, out.terminated, out.truncated, out.events,
                                          out.state)

        step_keys = jax.random.split(jax.random.fold_in(key, 1), task.horizon)
        _, (next_obs, actions, rewards, term, trunc, events, states) = jax.lax.scan(one_step, (state, obs), step_keys)
        states = jax.tree.map(lambda first, rest: jnp.concatenate([first[None], rest]), state, states)
        return jnp.concatenate([obs[None], next_obs]), actions, rewards, term, trunc, events, states

    return jax.vmap(episode)(seeds)


def episode_returns(task: Task, policy: JaxPolicy, seed: int, episodes: int) -> np.ndarray:
    """The returns of `rollout_jax`'s episodes, computed without the rest: what the policy does not read (an image
    task's frames) is never drawn."""
    rewards, ended = jax.device_get(_rewards(task, policy, jnp.asarray(episode_seeds(seed, episodes))))
    return np.array([np.sum(r[:n], dtype=np.float64) for r, n in zip(rewards, episode_lengths(ended, task.horizon))])


@partial(jax.jit, static_argnums=(0, 1))
def _rewards(task: Task, policy: JaxPolicy, seeds: jax.Array):
    _, _, rewards, terminated, truncated, _, _ = scan_episodes(task, policy, seeds)
    return rewards, terminated | truncated


@partial(jax.jit, static_argnums=0)
def replay(task: Task, episode_seeds: jax.Array, actions: jax.Array) -> jax.Array:
    """The observations (E, H + 1, obs_dim) of pure-JAX `task` along recorded episodes: each reset from its episode
    seed and stepped with its recorded actions (E, H, act_dim), as `run_episodes` stepped it."""
    fns = task.functional

    def episode(seed, actions):
        def step(state, action):
            out = fns.step(state, action)
            return out.state, out.obs

        state, obs = fns.reset(reset_key(seed))
        return jnp.concatenate([obs[None], jax.lax.scan(step, state, actions)[1]])

    return jax.vmap(episode)(episode_seeds, actions)


def rollout_jax(task: Task, policy: JaxPolicy, seed: int, episodes: int) -> list[Episode]:
    """Run `episodes` episodes of a pure-JAX task in one compiled program and cut each at its end."""
    seeds = episode_seeds(seed, episodes)
    obs, actions, rewards, term, trunc, events, _ = jax.device_get(scan_episodes(task, policy, jnp.asarray(seeds)))
    lengths = episode_lengths(term | trunc, task.horizon)
    return [
        Episode(obs[i, : n + 1], actions[i, :n], rewards[i, :n], term[i, :n], trunc[i, :n],
                {k: v[i, :n] for k, v in events.items()}, int(seeds[i]))
        for i, n in enumerate(lengths)
    ]


def rollout_gym(task: Task, policy: Callable[[np.ndarray], np.ndarray] | None, seed: int, episodes: int,
                name: str | None = None) -> list[Episode]:
    """Run a Gymnasium task's episodes in lockstep, one environment each.

    `policy` is called as the task's demonstrators are (`Task.demonstrator_batched`): once per step on the batch of
    every episode's observation (episodes, obs_dim), finished ones repeating their last observation so the batch
    shape never changes, returning (episodes, act_dim); or once per running episode on one observation (obs_dim,),
    returning (act_dim,). `name` names it in the error a wrong shape raises. `policy=None` samples uniform random
    actions from each environment's seeded action space.
    """
    seeds = [int(s) for s in episode_seeds(seed, episodes)]
    envs = [task.make_env() for _ in seeds]
    obs = np.stack([env.reset(seed=s)[0] for env, s in zip(envs, seeds)])
    for env, s in zip(envs, seeds):
        env.action_space.seed(s)
    # copies: `obs[i]` is overwritten in place at every step, and a view would end as the episode's last observation
    steps = [{"obs": [o.copy()], "action": [], "reward": [], "term": [], "trunc": [], **{k: [] for k in task.events}}
             for o in obs]
    live = np.ones(len(seeds), bool)
    act = None if policy is None else Demonstrator(task, policy, name or getattr(policy, "__qualname__", repr(policy)))
    while live.any():
        actions = None if act is None else act(obs, live)
        for i in np.nonzero(live)[0]:
            action = envs[i].action_space.sample() if actions is None else actions[i]
            obs[i], reward, terminated, truncated, info = envs[i].step(action)
            record = steps[i]
            for key, value in (("obs", obs[i].copy()), ("action", action), ("reward", reward),
                               ("term", terminated), ("trunc", truncated), *info["events"].items()):
                record[key].append(value)
            live[i] = not (terminated or truncated)
    for env in envs:
        env.close()
    return [Episode(np.asarray(r["obs"]), np.asarray(r["action"]), np.asarray(r["reward"]), np.asarray(r["term"]),
                    np.asarray(r["trunc"]), {k: np.asarray(r[k]) for k in task.events}, s)
            for r, s in zip(steps, seeds)]


class Demonstrator:
    """A demonstrator called by its task's convention (`Task.demonstrator_batched`), its actions' shapes checked.
    Called with every episode's observation (episodes, obs_dim) and which episodes run, it returns actions indexed
    by episode (an array, or a list holding None for finished episodes)."""

    def __init__(self, task: Task, policy: Callable[[np.ndarray], np.ndarray], name: str):
        self.task, self.policy, self.name, self.calls = task, policy, name, 0

    def __call__(self, obs: np.ndarray, live: np.ndarray):
        if self.task.demonstrator_batched:
            return self._call(obs, (len(obs), self.task.act_dim))
        return [self._call(o, (self.task.act_dim,)) if running else None for o, running in zip(obs, live)]

    def _call(self, obs: np.ndarray, expected: tuple[int, ...]) -> np.ndarray:
        given = (f"a batch of observations {obs.shape}" if self.task.demonstrator_batched
                 else f"one observation {obs.shape}")
        try:
            actions = np.asarray(self.policy(obs))
        except Exception as error:
            if self.calls:
                raise
            # the first call is where a demonstrator written for the other convention fails: say which is in force
            raise PhysgenError(f"task {self.task.name!r}'s demonstrator {self.name!r} failed on its first call, "
                               f"given {given}: {type(error).__name__}: {error}; {self._convention()}") from error
        self.calls += 1
        if actions.shape != expected:
            raise PhysgenError(f"task {self.task.name!r}'s demonstrator {self.name!r} returned actions of shape "
                               f"{actions.shape} given {given}; expected {expected}. {self._convention()}")
        return actions

    def _convention(self) -> str:
        if self.task.demonstrator_batched:
            return ("Its task calls demonstrators on a batch (batch, obs_dim) -> (batch, act_dim); one written for "
                    "one observation (obs_dim,) -> (act_dim,) needs demonstrator_batched=False in the Task")
        return ("Its task sets demonstrator_batched=False: one observation (obs_dim,) -> one action (act_dim,); one "
                "written for a batch (batch, obs_dim) -> (batch, act_dim) needs demonstrator_batched=True")


class Agent(Protocol):
    """Anything that acts: pure, jittable functions of its parameters and a carry (the bench's policies, planners,
    PPO's Gaussian policy). `run_episodes` and the real-time `Controller` both drive agents through these two."""

    def start(self, params, obs: jax.Array) -> Any:
        """The carry before an episode's first action, given its first observation."""

    def act(self, params, carry, obs: jax.Array, key: jax.Array) -> tuple[jax.Array, Any]:
        """The action for observation `obs` and the carry for the next step."""


class Rollouts(NamedTuple):
    """Per (seed, episode), numpy: padded to the horizon; steps past `lengths` are frozen copies."""

    observations: np.ndarray  # (S, E, H + 1, obs_dim)
    actions: np.ndarray  # (S, E, H, act_dim)
    rewards: np.ndarray  # (S, E, H)
    events: dict[str, np.ndarray]  # (S, E, H)
    lengths: np.ndarray  # (S, E)
    returns: np.ndarray  # (S, E)
    success: np.ndarray  # (S, E) bool


def step_key(episode_seed, t) -> jax.Array:
    """The key an agent acts with at step `t` of the episode reset from `episode_seed`."""
    return jax.random.fold_in(jax.random.fold_in(reset_key(episode_seed), 2), t)


def run_episodes(task: Task, agent: Agent, params, episode_seeds: np.ndarray, expert_return: float | None = None,
                 devices: int | str | None = None) -> Rollouts:
    """Every seed's agent (`params` stacked on axis 0) on the same episodes (a paired comparison), scored by the
    task's success rule (`expert_return`: the reference return that rules such as hopper's need); `devices` as
    `record_episodes` takes it."""
    return scored(task, *record_episodes(task, agent, params, episode_seeds, devices), expert_return)


def record_episodes(task: Task, agent: Agent, params, episode_seeds: np.ndarray,
                    devices: int | str | None = None) -> tuple:
    """(observations, actions, rewards, ended, events) of `run_episodes`, unscored: a pure-JAX task in one compiled
    program (vmap over seeds and episodes, scan over steps), a Gymnasium task stepped in lockstep with one compiled
    call per step for every (seed, episode). `devices` (`physgen.devices.seed_mesh`) spreads a pure-JAX task's seeds
    over up to that many devices, each running whole episodes of its seeds, and a Gymnasium task's the same way, its
    environments stepped on the CPU and each device acting for its seeds: a seed's rollouts are those of its
    device's group of seeds on one device, which may differ from all seeds' on one device in the last bits (XLA
    picks kernels by the batch's size). With several processes (`physgen.devices.initialize`) each process runs its
    own devices' groups, environments included."""
    seeds = len(jax.tree.leaves(params)[0])
    mesh = fit_mesh(seed_mesh(devices), seeds)
    if task.functional is None:
        if mesh is None:
            return _lockstep(task, agent, [params], np.asarray(episode_seeds))[0]
        groups = [part for part, in device_parts(mesh, placed_seeds(params, mesh))]
        return first_seeds(gathered(assembled(_lockstep(task, agent, groups, np.asarray(episode_seeds)), mesh)), seeds)
    recorded = on_each_device(partial(_scan, task, agent), mesh, placed_seeds(params, mesh),
                              replicated(jnp.asarray(episode_seeds), mesh))
    return first_seeds(gathered(recorded), seeds)


@partial(jax.jit, static_argnums=(0, 1))
def _scan(task: Task, agent: Agent, params, episode_seeds: jax.Array):
    fns = task.functional

    def episode(params, seed):
        env_state, obs = fns.reset(reset_key(seed))

        def step(carry, t):
            env_state, obs, agent_carry = carry
            action, agent_carry = agent.act(params, agent_carry, obs, step_key(seed, t))
            out = fns.step(env_state, action)
            return (out.state, out.obs, agent_carry), (out.obs, action, out.reward, out.terminated | out.truncated,
                                                       out.events)

        start = (env_state, obs, agent.start(params, obs))
        _, (next_obs, actions, rewards, ended, events) = jax.lax.scan(step, start, jnp.arange(task.horizon))
        return jnp.concatenate([obs[None], next_obs]), actions, rewards, ended, events

    return jax.vmap(jax.vmap(episode, in_axes=(None, 0)), in_axes=(0, None))(params, episode_seeds)


@partial(jax.jit, static_argnums=0)
def _start_all(agent: Agent, params, obs: jax.Array):
    return jax.vmap(jax.vmap(agent.start, in_axes=(None, 0)))(params, obs)


@partial(jax.jit, static_argnums=0)
def _act_all(agent: Agent, params, carries, obs: jax.Array, seeds: jax.Array, t):
    """One step of every (seed, episode): seed i's agent (params[i]) on its row of episodes."""
    act = lambda p, c, o, s: agent.act(p, c, o, step_key(s, t))
    return jax.vmap(jax.vmap(act, in_axes=(None, 0, 0, 0)), in_axes=(0, 0, 0, None))(params, carries, obs, seeds)


def _lockstep(task: Task, agent: Agent, groups: list, episode_seeds: np.ndarray) -> list[tuple]:
    """Step the Gymnasium environments of every (seed, episode) of `groups` (each a group of seeds' parameters, on
    one device) in lockstep, each group acting in one compiled call on its device; finished episodes repeat their
    last observation, and are recorded padded to the horizon with frozen copies as the compiled rollouts are. One
    recording per group."""
    sizes = [len(jax.tree.leaves(params)[0]) for params in groups]
    rows = np.split(np.arange(sum(sizes)), np.cumsum(sizes)[:-1])
    places = [jax.tree.leaves(params)[0] for params in groups]
    places = [next(iter(x.devices())) if isinstance(x, jax.Array) else None for x in places]
    shape, horizon = (sum(sizes), len(episode_seeds)), task.horizon
    obs = np.zeros((*shape, horizon + 1, task.obs_dim), np.float32)
    actions = np.zeros((*shape, horizon, task.act_dim), np.float32)
    rewards = np.zeros((*shape, horizon), np.float32)
    ended = np.zeros((*shape, horizon), bool)
    events = {name: np.zeros((*shape, horizon), bool) for name in task.events}
    envs = [[task.make_env() for _ in episode_seeds] for _ in range(shape[0])]
    for row in envs:
        for j, env in enumerate(row):
            obs[:, j, 0] = env.reset(seed=int(episode_seeds[j]))[0]
    seeds = [jax.device_put(episode_seeds, place) for place in places]
    carries = [_start_all(agent, params, jax.device_put(obs[r, :, 0], place))
               for params, r, place in zip(groups, rows, places)]
    live = np.ones(shape, bool)
    for t in range(horizon):
        acted = [_act_all(agent, params, carry, jax.device_put(obs[r, :, t], place), s, t)
                 for params, carry, r, place, s in zip(groups, carries, rows, places, seeds)]
        chosen, carries = np.concatenate([np.asarray(a) for a, _ in acted]), [carry for _, carry in acted]
        obs[:, :, t + 1] = obs[:, :, t]
        for i, j in zip(*np.nonzero(live)):
            observation, reward, terminated, truncated, info = envs[i][j].step(chosen[i, j])
            obs[i, j, t + 1], actions[i, j, t], rewards[i, j, t] = observation, chosen[i, j], reward
            for name in task.events:
                events[name][i, j, t] = info["events"][name]
            if terminated or truncated:
                ended[i, j, t], live[i, j] = True, False
        if not live.any():
            obs[:, :, t + 2:] = obs[:, :, t + 1, None]
            break
    for row in envs:
        for env in row:
            env.close()
    return [jax.tree.map(lambda x: x[r], (obs, actions, rewards, ended, events)) for r in rows]


def scored(task: Task, obs, actions, rewards, ended, events, expert_return: float | None) -> Rollouts:
    """Rollouts from padded recordings (seeds, episodes, ...): lengths, returns and the task's success rule."""
    lengths = episode_lengths(ended, task.horizon)
    returns = rewards.sum(-1)
    success = np.array([[task.success({k: v[i, j] for k, v in events.items()}, returns[i, j], lengths[i, j],
                                      expert_return) for j in range(lengths.shape[1])]
                        for i in range(lengths.shape[0])])
    return Rollouts(obs, actions, rewards, events, lengths, returns, success)
