"""`fork`: a 2-D point mass that must pass a round obstacle, left or right, to reach a goal.

Velocity control at 50 Hz: the action in [-1, 1]^2 is the commanded velocity as a fraction of `MAX_SPEED`.
The observation is (position, velocity as a fraction of `MAX_SPEED`, goal): 6 numbers.
Every episode starts on the obstacle's centre line; the goal's position varies. The expert picks a side with
probability 1/2 at reset, so the demonstrations are bimodal: the mean of the two modes points straight at the
obstacle, which is where a mean-squared-error regressor ends up. The expert heads straight ahead until `CHOICE_Y` and
only there turns to its side, so that nothing a policy sees before the turn (position, heading, camera frame) tells
the two sides apart: it must choose one itself.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np

from physgen.envs import draw
from physgen.envs.base import STANDARD_POLICY_BUDGETS, FunctionalEnv, Recipe, Task, TimeStep, box

GYM_ID = "physgen/Fork-v0"  # registered by physgen.envs.registry
DT = 1.0 / 50.0
MAX_SPEED = 2.0  # world units per second
ARENA = 1.5  # the arena is [-ARENA, ARENA]^2
OBSTACLE_RADIUS = 0.4
GOAL_RADIUS = 0.1
PASS_MARGIN = 0.25  # the expert's waypoint lies this far outside the obstacle
# the expert turns to its side here, late enough that BC cannot follow a side it has not yet seen, early enough that
# diffusion and flow clear the obstacle (docs/recipes.md)
CHOICE_Y = -0.72
HORIZON = 100
START_Y, GOAL_Y, GOAL_SPREAD = -1.0, 1.0, 0.2
EXPERT_NOISE = 0.1
EVENTS = ("collision", "goal_reached")
# the path holds a side when it heads there at a quarter of the top speed or more over 0.1 s: the expert heads for
# its waypoint at about two thirds of it, the mean of the two modes at well under a quarter
COMMIT_SPEED = 0.25
COMMIT_STEPS = 5


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
    k_goal, k_side = jax.random.split(key)
    start = jnp.array([0.0, START_Y])
    goal = jnp.array([jax.random.uniform(k_goal, minval=-GOAL_SPREAD, maxval=GOAL_SPREAD), GOAL_Y])
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
    """Head straight ahead up to `CHOICE_Y`, then for a waypoint beside the obstacle on the episode's side, then for
    the goal; Gaussian action noise."""
    waypoint = jnp.array([state.side * (OBSTACLE_RADIUS + PASS_MARGIN), 0.0])
    target = jnp.where(state.pos[1] < waypoint[1] - 0.05, waypoint, state.goal)
    delta = target - state.pos
    towards = delta / jnp.maximum(jnp.linalg.norm(delta), 0.2)
    action = jnp.where(state.pos[1] < CHOICE_Y, jnp.array([0.0, 1.0]), towards)
    action = action + EXPERT_NOISE * jax.random.normal(key, (2,))
    return jnp.clip(action, -1.0, 1.0).astype(jnp.float32)


@partial(jax.jit, static_argnames="size")
def render(state: ForkState, size: int = 128) -> jax.Array:
    canvas = draw.canvas(size, (-ARENA, ARENA), (-ARENA, ARENA))
    canvas = canvas.disk((0.0, 0.0), OBSTACLE_RADIUS, draw.OBSTACLE)
    canvas = canvas.disk(state.goal, GOAL_RADIUS, draw.GOAL)
    return canvas.disk(state.pos, 0.06, draw.AGENT).image


def success(events: dict[str, np.ndarray], episode_return: float, length: int, expert_return: float | None) -> bool:
    return bool(np.any(events["goal_reached"]) and not np.any(events["collision"]))


def held_sides(observations: np.ndarray) -> list[tuple[int, int]]:
    """(first step, side) of each stretch where the path held a side before the obstacle's middle (y < 0): a lateral
    speed towards it of `COMMIT_SPEED` or more on average over `COMMIT_STEPS` steps, stretches on one side merged."""
    passed = observations[:, 1] >= 0.0
    approach = observations[: int(passed.argmax()) if passed.any() else len(observations)]
    lateral = np.diff(approach[:, 0]) / (DT * MAX_SPEED)
    sides = []
    for side in (-1, 1):
        fast = np.convolve(side * lateral, np.ones(COMMIT_STEPS) / COMMIT_STEPS, mode="valid") >= COMMIT_SPEED
        sides += [(int(t), side) for t in np.flatnonzero(fast & ~np.r_[False, fast[:-1]])]
    sides.sort()
    return [held for i, held in enumerate(sides) if i == 0 or held[1] != sides[i - 1][1]]


def mode_averaging(observations, actions, events, length) -> int | None:
    """Onset 0 when the path comes up to the obstacle (within `PASS_MARGIN` of it) without ever holding a side:
    what the mean of the two modes does."""
    near = np.linalg.norm(observations[:, :2], axis=1).min() < OBSTACLE_RADIUS + PASS_MARGIN
    return 0 if near and not held_sides(observations) else None


def mode_switch(observations, actions, events, length) -> int | None:
    """The step the path started to head for the other side after holding one, before the obstacle's middle."""
    held = held_sides(observations)
    return held[1][0] if len(held) > 1 else None


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
    failure_detectors={"mode_averaging": mode_averaging, "mode_switch": mode_switch},
    demonstrations="scripted expert: straight ahead, then passes left or right with probability 1/2 (chosen at y = "
                   f"{CHOICE_Y}), Gaussian action noise 0.1",
    gym_id=GYM_ID,
    make_env=partial(gym.make, GYM_ID),
    success=success,
    functional=FunctionalEnv(reset=reset, step=step, expert=expert, render=render),
    # chosen over 10 seeds (docs/recipes.md): the late turn takes diffusion and flow more steps than the standard
    # quick budget's to learn, and flow learns it sooner predicting the clean chunk
    recipe=Recipe(methods={"flow": {"target": "sample"}},
                  budgets={**STANDARD_POLICY_BUDGETS, "quick": {**STANDARD_POLICY_BUDGETS["quick"], "steps": 4_000}}),
)
