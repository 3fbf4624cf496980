"""`push`: a round pusher must push a puck into a goal region on a table without walls.

Velocity control at 50 Hz: the action in [-1, 1]^2 is the pusher's commanded velocity as a fraction of `MAX_SPEED`.
The puck moves only by contact, quasi-statically: when the pusher's step would overlap it, the puck is moved along
the line between their centres until the two just touch (frictionless disks, no sliding after the push). Pushing
off the puck's centre line turns it aside, so the pusher has to keep its contact point behind the puck, closed loop.
The observation is (pusher position, pusher velocity as a fraction of `MAX_SPEED`, puck position, goal): 8 numbers.
The pusher starts between the puck and the goal, so it must go round the puck to push it: the expert goes round
on a side drawn with probability 1/2 at reset, and the demonstrations are bimodal. A puck pushed over the table's
edge ends the episode as a failure.
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

GYM_ID = "physgen/Push-v0"  # registered by physgen.envs.registry
DT = 1.0 / 50.0
MAX_SPEED = 1.0  # table units per second
TABLE = 1.0  # the table is [-TABLE, TABLE]^2; a puck whose centre leaves it has fallen off
PUSHER_RADIUS = 0.05
PUCK_RADIUS = 0.1
TOUCH = PUSHER_RADIUS + PUCK_RADIUS  # centre distance at contact
GOAL_RADIUS = 0.1
HORIZON = 150
PUCK_START = ((-0.15, 0.15), (0.0, 0.1))  # x and y ranges
GOAL_START = ((-0.3, 0.3), (-0.65, -0.55))
PUSHER_OFFSET = ((-0.1, 0.1), (-0.4, -0.3))  # the pusher's start relative to the puck: on the goal's side
EVENTS = ("contact", "off_table", "goal_reached")
# the expert: it orbits the puck at `ORBIT` from its centre towards the point behind it (seen from the goal), and
# pushes once within `ALIGNED` of the line through the puck and the goal
ORBIT = TOUCH + 0.08
ORBIT_STEP = 0.5  # radians ahead on the orbit that the expert heads for
ALIGNED = 0.04
PUSH_SPEED = 0.6  # of MAX_SPEED: slower pushes keep the contact point where the expert wants it
PUSH_GAIN = 8.0  # per second: how fast the expert corrects its offset from the contact point behind the puck
EXPERT_NOISE = 0.1
PUSHED_AWAY = 0.1  # the puck ended up this much farther from the goal than it started: pushed the wrong way


class PushState(NamedTuple):
    pusher: jax.Array  # (2,)
    vel: jax.Array  # (2,) the last commanded velocity, as a fraction of MAX_SPEED
    puck: jax.Array  # (2,)
    goal: jax.Array  # (2,)
    side: jax.Array  # -1 or +1: the side the expert goes round the puck on in this episode
    t: jax.Array
    done: jax.Array


def _obs(state: PushState) -> jax.Array:
    return jnp.concatenate([state.pusher, state.vel, state.puck, state.goal]).astype(jnp.float32)


def _uniform(key: jax.Array, ranges) -> jax.Array:
    low, high = jnp.array(ranges, jnp.float32).T
    return jax.random.uniform(key, (2,), minval=low, maxval=high)


def reset(key: jax.Array) -> tuple[PushState, jax.Array]:
    k_puck, k_goal, k_pusher, k_side = jax.random.split(key, 4)
    puck = _uniform(k_puck, PUCK_START)
    side = jnp.where(jax.random.bernoulli(k_side), 1.0, -1.0)
    state = PushState(puck + _uniform(k_pusher, PUSHER_OFFSET), jnp.zeros(2, jnp.float32), puck,
                      _uniform(k_goal, GOAL_START), side, jnp.int32(0), jnp.bool_(False))
    return state, _obs(state)


def push_puck(pusher: jax.Array, puck: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The puck after the pusher moved to `pusher`, and whether they touch: an overlapping puck is moved along the
    line of centres until it just touches the pusher."""
    offset = puck - pusher
    distance = jnp.linalg.norm(offset)
    overlap = distance < TOUCH
    moved = pusher + offset / jnp.maximum(distance, 1e-6) * TOUCH
    return jnp.where(overlap, moved, puck), overlap


def step(state: PushState, action: jax.Array) -> TimeStep:
    command = jnp.clip(action, -1.0, 1.0)
    pusher = jnp.clip(state.pusher + DT * MAX_SPEED * command, -TABLE, TABLE)
    puck, contact = push_puck(pusher, state.puck)
    off_table = jnp.any(jnp.abs(puck) > TABLE)
    goal_reached = (jnp.linalg.norm(puck - state.goal) < GOAL_RADIUS) & ~off_table
    progress = jnp.linalg.norm(state.puck - state.goal) - jnp.linalg.norm(puck - state.goal)
    reward = progress + goal_reached.astype(jnp.float32) - off_table.astype(jnp.float32)
    t = state.t + 1
    terminated = off_table | goal_reached
    truncated = (t >= HORIZON) & ~terminated
    live = ~state.done
    new = state._replace(
        pusher=jnp.where(live, pusher, state.pusher),
        vel=jnp.where(live, command, state.vel),
        puck=jnp.where(live, puck, state.puck),
        t=jnp.where(live, t, state.t),
        done=state.done | terminated | truncated,
    )
    events = {"contact": contact & live, "off_table": off_table & live, "goal_reached": goal_reached & live}
    return TimeStep(new, _obs(new), jnp.where(live, reward, 0.0).astype(jnp.float32), terminated & live,
                    truncated & live, events)


def expert(state: PushState, key: jax.Array) -> jax.Array:
    """Go round the puck on the episode's side to the point behind it (seen from the goal), then push it towards the
    goal, correcting the contact point's offset from the line through puck and goal; Gaussian action noise."""
    to_goal = state.goal - state.puck
    ahead = to_goal / jnp.maximum(jnp.linalg.norm(to_goal), 1e-6)
    behind = -ahead
    beside = state.side * jnp.array([-ahead[1], ahead[0]])
    relative = state.pusher - state.puck
    angle = jnp.arctan2(relative @ beside, relative @ behind)  # 0 behind the puck, positive on the episode's side
    angle = jnp.where(angle < -jnp.pi / 2, angle + 2 * jnp.pi, angle)  # from in front, go round on the side
    heading = angle - jnp.clip(angle, -ORBIT_STEP, ORBIT_STEP)
    waypoint = state.puck + ORBIT * (jnp.cos(heading) * behind + jnp.sin(heading) * beside)
    delta = waypoint - state.pusher
    orbit_velocity = delta / jnp.maximum(jnp.linalg.norm(delta), 0.05)
    aligned = (relative @ behind > 0) & (jnp.abs(relative @ beside) < ALIGNED)
    contact_point = state.puck + TOUCH * behind
    push_velocity = PUSH_SPEED * ahead + PUSH_GAIN * (contact_point - state.pusher) / MAX_SPEED
    velocity = jnp.where(aligned, push_velocity, orbit_velocity)
    action = velocity + EXPERT_NOISE * jax.random.normal(key, (2,))
    return jnp.clip(action, -1.0, 1.0).astype(jnp.float32)


@partial(jax.jit, static_argnames="size")
def render(state: PushState, size: int = 128) -> jax.Array:
    edge = TABLE + 0.1
    canvas = draw.canvas(size, (-edge, edge), (-edge, edge), draw.WALL)
    canvas = canvas.rect((-TABLE, -TABLE), (TABLE, TABLE), draw.BACKGROUND).disk(state.goal, GOAL_RADIUS, draw.GOAL)
    return canvas.disk(state.puck, PUCK_RADIUS, draw.OBSTACLE).disk(state.pusher, PUSHER_RADIUS, draw.AGENT).image


def success(events: dict[str, np.ndarray], episode_return: float, length: int, expert_return: float | None) -> bool:
    return bool(np.any(events["goal_reached"]) and not np.any(events["off_table"]))


def never_pushed(observations, actions, events, length) -> int | None:
    """Onset 0 when the pusher never touched the puck."""
    return 0 if not np.any(events["contact"][:length]) else None


def pushed_away(observations, actions, events, length) -> int | None:
    """The step the puck began the move away from the goal that took it `PUSHED_AWAY` farther than at the start:
    pushed the wrong way, as when the pusher runs into it on the way round."""
    distance = np.linalg.norm(observations[: length + 1, 4:6] - observations[0, 6:8], axis=1)
    away = np.flatnonzero(distance > distance[0] + PUSHED_AWAY)
    if not away.size:
        return None
    start = int(away[0])
    while start > 0 and distance[start - 1] < distance[start]:
        start -= 1
    return start


TASK = Task(
    name="push",
    summary="2-D pusher pushing a puck into a goal on a table without walls; contact-rich, bimodal expert (goes "
    "round the puck left or right).",
    observation_space=box(-TABLE, TABLE, 8),
    action_space=box(-1.0, 1.0, 2),
    control_hz=1.0 / DT,
    horizon=HORIZON,
    success_rule="puck's centre within the goal region (radius 0.1) within the horizon, never off the table",
    events=EVENTS,
    failure_events=("off_table",),
    failure_detectors={"never_pushed": never_pushed, "pushed_away": pushed_away},
    demonstrations="scripted expert: goes round the puck left or right with probability 1/2, pushes it with a "
    "proportional correction of the contact point, Gaussian action noise 0.1",
    gym_id=GYM_ID,
    make_env=partial(gym.make, GYM_ID),
    success=success,
    functional=FunctionalEnv(reset=reset, step=step, expert=expert, render=render),
    # quick: twice the standard steps and batch, as flow learns push more slowly than fork (docs/recipes.md)
    recipe=Recipe(budgets={**STANDARD_POLICY_BUDGETS, "quick": {"steps": 4_000, "batch_size": 256, "hidden": 256}}),
)
