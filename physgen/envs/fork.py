"""`fork`: a 2-D point mass that must pass a round obstacle, left or right, to reach a goal.

Velocity control at 50 Hz: the action in [-1, 1]^2 is the commanded velocity as a fraction of `MAX_SPEED`.
The observation is (position, velocity as a fraction of `MAX_SPEED`, goal): 6 numbers.
The expert picks a side with probability 1/2 at reset, so the demonstrations are bimodal: the mean of the two
modes points straight at the obstacle, which is where a mean-squared-error regressor ends up.
"""

from __future__ import annotations

from typing import NamedTuple

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np

from physgen.envs import draw
from physgen.envs.base import FunctionalEnv, Task, TimeStep, box

DT = 1.0 / 50.0
MAX_SPEED = 2.0  # world units per second
ARENA = 1.5  # the arena is [-ARENA, ARENA]^2
OBSTACLE_RADIUS = 0.4
GOAL_RADIUS = 0.1
PASS_MARGIN = 0.2  # the expert's waypoint lies this far outside the obstacle
HORIZON = 100
START_Y, GOAL_Y, SPREAD = -1.0, 1.0, 0.2
EXPERT_NOISE = 0.1
EVENTS = ("collision", "goal_reached")


class ForkState(NamedTuple):
    pos: jax.Array  # (2,)
    vel: jax.Array  # (2,) the last commanded velocity, as a fraction of MAX_SPEED
    goal: jax.Array  # (2,)
    side: jax.Array  # -1 or +1: the expert's mode for this episode
    t: jax.Array
    done: jax.Array


def _obs(state: ForkState) -> jax.Array:
    return jnp.concatenate([state.pos, state.vel, state.goal]).astype(jnp.float32)


def reset(key: jax.Array) -> tuple[ForkState, jax.Array]:
    k_start, k_goal, k_side = jax.random.split(key, 3)
    start = jnp.array([jax.random.uniform(k_start, minval=-SPREAD, maxval=SPREAD), START_Y])
    goal = jnp.array([jax.random.uniform(k_goal, minval=-SPREAD, maxval=SPREAD), GOAL_Y])
    side = jnp.where(jax.random.bernoulli(k_side), 1.0, -1.0)
    state = ForkState(start.astype(jnp.float32), jnp.zeros(2, jnp.float32), goal.astype(jnp.float32), side,
                      jnp.int32(0), jnp.bool_(False))
    return state, _obs(state)


def step(state: ForkState, action: jax.Array) -> TimeStep:
    command = jnp.clip(action, -1.0, 1.0)
    pos = jnp.clip(state.pos + DT * MAX_SPEED * command, -ARENA, ARENA)
    collision = jnp.linalg.norm(pos) < OBSTACLE_RADIUS
    goal_reached = (jnp.linalg.norm(pos - state.goal) < GOAL_RADIUS) & ~collision
    progress = jnp.linalg.norm(state.pos - state.goal) - jnp.linalg.norm(pos - state.goal)
    reward = progress + goal_reached.astype(jnp.float32) - collision.astype(jnp.float32)
    t = state.t + 1
    terminated = collision | goal_reached
    truncated = (t >= HORIZON) & ~terminated
    live = ~state.done
    new = ForkState(
        pos=jnp.where(live, pos, state.pos),
        vel=jnp.where(live, command, state.vel),
        goal=state.goal,
        side=state.side,
        t=jnp.where(live, t, state.t),
        done=state.done | terminated | truncated,
    )
    events = {"collision": collision & live, "goal_reached": goal_reached & live}
    return TimeStep(new, _obs(new), jnp.where(live, reward, 0.0).astype(jnp.float32), terminated & live, truncated & live, events)


def expert(state: ForkState, key: jax.Array) -> jax.Array:
    """Head for a waypoint beside the obstacle on the episode's side, then for the goal; Gaussian action noise."""
    waypoint = jnp.array([state.side * (OBSTACLE_RADIUS + PASS_MARGIN), 0.0])
    target = jnp.where(state.pos[1] < waypoint[1] - 0.05, waypoint, state.goal)
    delta = target - state.pos
    action = delta / jnp.maximum(jnp.linalg.norm(delta), 0.2)
    action = action + EXPERT_NOISE * jax.random.normal(key, (2,))
    return jnp.clip(action, -1.0, 1.0).astype(jnp.float32)


def render(state: ForkState, size: int = 128) -> np.ndarray:
    canvas = draw.Canvas(size, (-ARENA, ARENA), (-ARENA, ARENA))
    canvas.disk((0.0, 0.0), OBSTACLE_RADIUS, draw.OBSTACLE)
    canvas.disk(np.asarray(state.goal), GOAL_RADIUS, draw.GOAL)
    canvas.disk(np.asarray(state.pos), 0.06, draw.AGENT)
    return canvas.image


def success(events: dict[str, np.ndarray], episode_return: float, length: int, expert_return: float | None) -> bool:
    return bool(np.any(events["goal_reached"]) and not np.any(events["collision"]))


def _make_env(render_mode: str | None = None):
    return gym.make("physgen/Fork-v0", render_mode=render_mode)


TASK = Task(
    name="fork",
    summary="2-D point mass passing a round obstacle to reach a goal; bimodal expert (left or right).",
    observation_space=box(-ARENA, ARENA, 6),
    action_space=box(-1.0, 1.0, 2),
    control_hz=1.0 / DT,
    horizon=HORIZON,
    success_rule="goal region reached within the horizon without touching the obstacle",
    events=EVENTS,
    failure_events=("collision",),
    demonstrations="scripted expert: passes left or right with probability 1/2, Gaussian action noise 0.1",
    gym_id="physgen/Fork-v0",
    make_env=_make_env,
    success=success,
    functional=FunctionalEnv(reset=reset, step=step, expert=expert, render=render),
)
