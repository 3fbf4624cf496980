"""`maze`: a 2-D point mass in a small maze with loops (many routes), long horizon and sparse reward.

Velocity control at 50 Hz, the agent a square of half-width `AGENT_RADIUS` that slides along walls. Reward is 1 on
reaching the goal region (which ends the episode) and 0 otherwise. Start and goal are random free cells. The expert is
a planner: a breadth-first distance field over the grid, computed at reset, followed cell by cell with random
tie-breaking between equally short routes, tracked by a proportional velocity controller.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np

from physgen.envs import draw
from physgen.envs.base import FunctionalEnv, Task, TimeStep, box

LAYOUT = (
    "#########",
    "#.......#",
    "#.##.##.#",
    "#.#...#.#",
    "#...#...#",
    "#.#...#.#",
    "#.##.##.#",
    "#.......#",
    "#########",
)
WALLS = np.array([[c == "#" for c in row] for row in reversed(LAYOUT)])  # WALLS[row, col], row 0 at the bottom
ROWS, COLS = WALLS.shape
FREE_CELLS = np.argwhere(~WALLS)  # (K, 2) of (row, col)
GYM_ID = "physgen/Maze-v0"  # registered by physgen.envs.registry
DT = 1.0 / 50.0
MAX_SPEED = 3.0  # cells per second
AGENT_RADIUS = 0.15
GOAL_RADIUS = 0.3
START_JITTER = 0.25
HORIZON = 400
FAR = 1e6  # distance of a wall cell
NEIGHBOURS = np.array([(1, 0), (-1, 0), (0, 1), (0, -1)])
EVENTS = ("wall_contact", "goal_reached")
WRONG_TURN_CELLS = 2  # farther from the goal than the nearest cell reached: a branch followed, not a corner cut
STUCK_RADIUS, STUCK_STEPS = 0.5, HORIZON // 4  # within half a cell of where it ended for a quarter of the horizon


class MazeState(NamedTuple):
    pos: jax.Array  # (2,) as (x, y)
    goal: jax.Array  # (2,)
    distance: jax.Array  # (ROWS, COLS): grid steps to the goal cell
    tie_break: jax.Array  # (ROWS, COLS) in [0, 0.5): the expert's route choice among equally short ones
    t: jax.Array
    done: jax.Array


def _obs(state: MazeState) -> jax.Array:
    return jnp.concatenate([state.pos, state.goal]).astype(jnp.float32)


def _cell(pos: jax.Array) -> jax.Array:
    """(row, col) of a position."""
    return jnp.clip(jnp.floor(pos[::-1]).astype(jnp.int32), 0, jnp.array([ROWS - 1, COLS - 1]))


def _center(cell: jax.Array) -> jax.Array:
    return cell[::-1].astype(jnp.float32) + 0.5


def distance_field(goal_cell: jax.Array) -> jax.Array:
    """Breadth-first grid distance from every free cell to `goal_cell` (FAR for walls and unreachable cells)."""
    walls = jnp.asarray(WALLS)
    start = jnp.full(WALLS.shape, FAR).at[goal_cell[0], goal_cell[1]].set(0.0)

    def relax(_, d):
        nearest = jnp.min(jnp.stack([jnp.roll(d, tuple(o), axis=(0, 1)) for o in NEIGHBOURS]), axis=0)
        return jnp.where(walls, FAR, jnp.minimum(d, nearest + 1.0))

    return jax.lax.fori_loop(0, len(FREE_CELLS), relax, start)


def reset(key: jax.Array) -> tuple[MazeState, jax.Array]:
    k_cells, k_jitter, k_ties = jax.random.split(key, 3)
    start_cell, goal_cell = jnp.asarray(FREE_CELLS)[jax.random.choice(k_cells, len(FREE_CELLS), (2,), replace=False)]
    jitter = jax.random.uniform(k_jitter, (2,), minval=-START_JITTER, maxval=START_JITTER)
    state = MazeState(
        pos=_center(start_cell) + jitter,
        goal=_center(goal_cell),
        distance=distance_field(goal_cell),
        tie_break=0.5 * jax.random.uniform(k_ties, WALLS.shape),
        t=jnp.int32(0),
        done=jnp.bool_(False),
    )
    return state, _obs(state)


def blocked(pos: jax.Array) -> jax.Array:
    """Whether the agent's square at `pos` overlaps a wall cell."""
    corners = pos + AGENT_RADIUS * jnp.array([[-1, -1], [-1, 1], [1, -1], [1, 1]], jnp.float32)
    cells = jax.vmap(_cell)(corners)
    return jnp.any(jnp.asarray(WALLS)[cells[:, 0], cells[:, 1]])


def step(state: MazeState, action: jax.Array) -> TimeStep:
    move = DT * MAX_SPEED * jnp.clip(action, -1.0, 1.0)
    x_try = state.pos + jnp.array([move[0], 0.0])
    x_free = ~blocked(x_try)
    pos = jnp.where(x_free, x_try, state.pos)
    y_try = pos + jnp.array([0.0, move[1]])
    y_free = ~blocked(y_try)
    pos = jnp.where(y_free, y_try, pos)
    wall_contact = (~x_free & (move[0] != 0)) | (~y_free & (move[1] != 0))
    goal_reached = jnp.linalg.norm(pos - state.goal) < GOAL_RADIUS
    t = state.t + 1
    truncated = (t >= HORIZON) & ~goal_reached
    live = ~state.done
    new = state._replace(
        pos=jnp.where(live, pos, state.pos),
        t=jnp.where(live, t, state.t),
        done=state.done | goal_reached | truncated,
    )
    events = {"wall_contact": wall_contact & live, "goal_reached": goal_reached & live}
    reward = (goal_reached & live).astype(jnp.float32)
    return TimeStep(new, _obs(new), reward, goal_reached & live, truncated & live, events)


def expert(state: MazeState, key: jax.Array) -> jax.Array:
    """Track the centre of the next cell on a shortest route (the goal itself once in the goal's cell)."""
    del key  # the planner is deterministic given the state; its randomness was drawn at reset
    cell = _cell(state.pos)
    neighbours = cell + jnp.asarray(NEIGHBOURS)
    scores = state.distance[neighbours[:, 0], neighbours[:, 1]] + state.tie_break[neighbours[:, 0], neighbours[:, 1]]
    next_cell = neighbours[jnp.argmin(scores)]
    in_goal_cell = jnp.all(cell == _cell(state.goal))
    target = jnp.where(in_goal_cell, state.goal, _center(next_cell))
    delta = target - state.pos
    return jnp.clip(delta / jnp.maximum(jnp.linalg.norm(delta), 0.1), -1.0, 1.0).astype(jnp.float32)


@partial(jax.jit, static_argnames="size")
def render(state: MazeState, size: int = 144) -> jax.Array:
    canvas = draw.canvas(size, (0.0, float(COLS)), (0.0, float(ROWS))).grid(WALLS, draw.WALL)
    canvas = canvas.disk(state.goal, GOAL_RADIUS, draw.GOAL)
    return canvas.rect(state.pos - AGENT_RADIUS, state.pos + AGENT_RADIUS, draw.AGENT).image


def success(events: dict[str, np.ndarray], episode_return: float, length: int, expert_return: float | None) -> bool:
    return bool(np.any(events["goal_reached"]))


def grid_distances(observations: np.ndarray) -> np.ndarray:
    """Grid steps from each observed position's cell to the goal's (the planner's distance field)."""
    field = np.asarray(distance_field(_cell(jnp.asarray(observations[0, 2:4]))))
    cells = np.clip(np.floor(observations[:, 1::-1]).astype(int), 0, [ROWS - 1, COLS - 1])
    return field[cells[:, 0], cells[:, 1]]


def wrong_turn(observations, actions, events, length) -> int | None:
    """The step the agent left the cell nearest the goal it had reached, on the way to one `WRONG_TURN_CELLS`
    farther: it took a branch away from the goal."""
    distance = grid_distances(observations[: length + 1])
    nearest = np.minimum.accumulate(distance)
    away = np.flatnonzero(distance >= nearest + WRONG_TURN_CELLS)
    if not away.size:
        return None
    return int(np.flatnonzero(distance[: away[0]] == nearest[away[0]])[-1]) + 1


def stuck(observations, actions, events, length) -> int | None:
    """The first step of the episode's final stretch within `STUCK_RADIUS` of where it ended, when that stretch lasts
    `STUCK_STEPS` or more."""
    positions = observations[: length + 1, :2]
    away = np.linalg.norm(positions - positions[-1], axis=1) > STUCK_RADIUS
    start = int(np.flatnonzero(away)[-1]) + 1 if away.any() else 0
    return start if length - start >= STUCK_STEPS else None


TASK = Task(
    name="maze",
    summary="2-D point mass in a 7x7 maze with loops; random start and goal, sparse reward, long horizon.",
    observation_space=box(0.0, float(max(ROWS, COLS)), 4),
    action_space=box(-1.0, 1.0, 2),
    control_hz=1.0 / DT,
    horizon=HORIZON,
    success_rule="goal region (radius 0.3 cell) reached within the horizon",
    events=EVENTS,
    failure_detectors={"wrong_turn": wrong_turn, "stuck": stuck},
    demonstrations="scripted planner: breadth-first grid distances, random tie-breaking between shortest routes, "
    "proportional tracking of cell centres",
    gym_id=GYM_ID,
    make_env=partial(gym.make, GYM_ID),
    success=success,
    functional=FunctionalEnv(reset=reset, step=step, expert=expert, render=render),
)
