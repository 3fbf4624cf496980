"""`rssm-mpc`: receding-horizon planning in an RSSM's latent space with CEM or MPPI over its reward, continue and
value heads.

Each control step filters the newest observation into the latent state, then scores candidate action sequences
by imagining them (prior modes) and summing predicted rewards, discounted and weighted by the predicted probability
of still being in the episode, plus the value of where the plan ends (TD-MPC's idea: a short horizon then stops
trading a fall just past it for reward within it): sum_{t<H} gamma^t prod_{k<t} c_k r_t + gamma^H prod_{k<H} c_k
V(s_H). The first action of the refined plan is executed
and the rest shifted to warm-start the next step. `MPC` is an agent (`physgen.envs.rollout.Agent`): the bench runs
it with `run_episodes` like any policy, one control step being one `act`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp

from physgen.configs import check
from physgen.envs import Task
from physgen.errors import PhysgenError
from physgen.world_models.rssm import RSSM, State

PLANNERS = ("cem", "mppi")


@dataclass(frozen=True)
class MPCConfig:
    """The planner: CEM or MPPI over `population` action sequences of `horizon` steps, `iterations` refinements per
    control step. The defaults keep one step of fork's RSSM within a 50 Hz budget on a 2-core CPU; longer horizons
    planned worse on fork, as the imagined error compounds (docs/recipes.md)."""

    planner: str = "cem"
    horizon: int = 8
    population: int = 64
    elites: int = 8  # CEM
    temperature: float = 0.5  # MPPI, in units of return
    iterations: int = 2
    init_std: float = 0.5  # as a fraction of the half-width of the action bounds
    min_std: float = 0.05
    discount: float = 0.99
    terminal_value: bool = True  # add the RSSM's value of the plan's last state

    def __post_init__(self):
        check(self, {"planner": PLANNERS}, ("horizon", "population", "elites", "iterations"))
        for name in ("temperature", "init_std", "min_std", "discount"):
            if not getattr(self, name) > 0:
                raise PhysgenError(f"{name} must be positive, got {getattr(self, name)}")
        if self.elites > self.population:
            raise PhysgenError(f"elites ({self.elites}) cannot exceed population ({self.population})")


class Carry(NamedTuple):
    """What the controller keeps between steps: the latent state, the last action, the warm-start plan mean."""

    state: State
    action: jax.Array
    plan: jax.Array  # (horizon, act_dim)


class MPC(NamedTuple):
    """A planner over a trained RSSM; `low`/`high` are the task's action bounds (tuples, so the MPC is hashable)."""

    model: RSSM
    config: MPCConfig
    low: tuple[float, ...]
    high: tuple[float, ...]

    @classmethod
    def for_task(cls, model: RSSM, config: MPCConfig, task: Task) -> "MPC":
        return cls(model, config, tuple(map(float, task.action_space.low)), tuple(map(float, task.action_space.high)))

    def start(self, params, obs: jax.Array) -> Carry:
        """The carry before the first observation (the state and zero action the RSSM was trained to start from)."""
        mid = (jnp.asarray(self.low) + jnp.asarray(self.high)) / 2
        return Carry(self.model.initial(), jnp.zeros(self.model.act_dim),
                     jnp.broadcast_to(mid, (self.config.horizon, self.model.act_dim)))

    def returns(self, params, state: State, plans: jax.Array) -> jax.Array:
        """Predicted discounted returns (P,) of action sequences `plans` (P, H, act_dim) from `state`."""
        c = self.config

        def one(actions):
            states, _ = self.model.imagine(params, state, actions)
            rewards, alive = self.model.reward(params, states), self.model.continuation(params, states)
            survival = jnp.cumprod(alive)
            weights = jnp.concatenate([jnp.ones(1), survival[:-1]]) * c.discount ** jnp.arange(c.horizon)
            last = jax.tree.map(lambda x: x[-1], states)
            tail = c.discount ** c.horizon * survival[-1] * self.model.value(params, last) if c.terminal_value else 0.0
            return jnp.sum(weights * rewards) + tail

        return jax.vmap(one)(plans)

    def plan(self, params, state: State, mean: jax.Array, key: jax.Array) -> jax.Array:
        """The refined plan mean (H, act_dim) from a warm start `mean`."""
        return optimize(lambda plans: self.returns(params, state, plans), mean, key, self.config,
                        jnp.asarray(self.low), jnp.asarray(self.high))

    def act(self, params, carry: Carry, obs: jax.Array, key: jax.Array) -> tuple[jax.Array, Carry]:
        """One control step: filter `obs`, plan, return the first action and the carry for the next step."""
        state = self.model.filter(params, carry.state, carry.action, obs)
        mean = self.plan(params, state, carry.plan, key)
        action = mean[0]
        return action, Carry(state, action, jnp.concatenate([mean[1:], mean[-1:]]))


def optimize(score, mean: jax.Array, key: jax.Array, config: MPCConfig, low: jax.Array, high: jax.Array) -> jax.Array:
    """CEM or MPPI: refine the mean of a Gaussian over action sequences (H, act_dim) to maximize `score`
    ((P, H, act_dim) -> (P,)), keeping the current mean among the candidates."""
    c = config
    std = jnp.full_like(mean, c.init_std) * (high - low) / 2

    def iteration(carry, k):
        mean, std = carry
        noise = jax.random.normal(k, (c.population - 1, *mean.shape))
        plans = jnp.clip(jnp.concatenate([mean[None], mean + std * noise]), low, high)
        scores = score(plans)
        if c.planner == "cem":
            elite = plans[jax.lax.top_k(scores, c.elites)[1]]
            mean, spread = elite.mean(0), elite.std(0)
        else:
            w = jax.nn.softmax((scores - scores.max()) / c.temperature)[:, None, None]
            mean = jnp.sum(w * plans, 0)
            spread = jnp.sqrt(jnp.sum(w * (plans - mean) ** 2, 0))
        return (mean, jnp.maximum(spread, c.min_std * (high - low) / 2)), None

    return jax.lax.scan(iteration, (mean, std), jax.random.split(key, c.iterations))[0][0]
