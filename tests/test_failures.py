"""The failure categories on failures with known causes, constructed from fork's expert and a standing hopper."""

from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from physgen.bench.failures import Trajectory, diagnose, fit_support, nearest_distances
from physgen.envs import fork, get_task, hopper, maze
from physgen.envs.rollout import expert_policy, rollout_jax, rollout_gym
from physgen.errors import PhysgenError

EPISODES = 200
SWITCH_STEP = 13  # half-way from the expert's turn (step 7 or 8) to the obstacle's near edge (step 17 to 20)
NOISE = 1.0  # standard deviation of the noise added to the expert's actions, half the action range
GAIN = 10.0  # the expert's actions amplified, then clipped to the action bounds
CUT = 30  # a horizon cut short: the expert needs about 60 steps
FORK = get_task("fork")


def averaged(state, obs, key):
    """The expert with its mode choice averaged: the mean of its actions for either side."""
    return 0.5 * (fork.expert(state._replace(side=1.0), key) + fork.expert(state._replace(side=-1.0), key))


def switched(state, obs, key):
    """The expert forced to the other side half-way from its turn to the obstacle."""
    return fork.expert(state._replace(side=jnp.where(state.t >= SWITCH_STEP, -state.side, state.side)), key)


def noisy(state, obs, key):
    noise = NOISE * jax.random.normal(jax.random.fold_in(key, 1), (2,))
    return jnp.clip(fork.expert(state, key) + noise, -1.0, 1.0)


def saturated(state, obs, key):
    return jnp.clip(GAIN * fork.expert(state, key), -1.0, 1.0)


@pytest.fixture(scope="module")
def support():
    """The support of the expert's states, fitted as the bench fits it on a dataset."""
    states = np.concatenate([e.observations for e in rollout_jax(FORK, expert_policy(FORK), 1000, 400)])
    return fit_support(states[: len(states) * 3 // 4], states[len(states) * 3 // 4:])


def failed_trajectories(policy, length=None) -> list[Trajectory]:
    """The failed episodes of `policy` on fork, each cut at `length` steps when given."""
    failed = []
    for episode in rollout_jax(FORK, policy, 0, EPISODES):
        n = len(episode.actions) if length is None else min(length, len(episode.actions))
        events = {k: v[:n] for k, v in episode.events.items()}
        if not FORK.success(events, 0.0, n, None):
            failed.append(Trajectory(episode.observations, episode.actions, episode.events, None, n))
    return failed


def test_constructed_fork_failures_are_named_by_their_cause(support):
    constructed = {"mode_averaging": failed_trajectories(averaged), "mode_switch": failed_trajectories(switched),
                   "distribution_shift": failed_trajectories(noisy),
                   "action_saturation": failed_trajectories(saturated),
                   "timeout": failed_trajectories(expert_policy(FORK), CUT)}
    matrix = {}
    for cause, trajectories in constructed.items():
        named = [diagnose(FORK, t._replace(ood=nearest_distances(support, t.observations)), support.threshold)
                 for t in trajectories]
        matrix[cause] = Counter(d.category for d in named)
    columns = sorted({c for row in matrix.values() for c in row})
    print("\ntrue cause | failures | " + " | ".join(columns))
    for cause, row in matrix.items():
        print(f"{cause} | {sum(row.values())} | " + " | ".join(str(row[c]) for c in columns))
    for cause, row in matrix.items():
        assert sum(row.values()) >= 30, f"too few constructed {cause} failures to measure"
        assert row[cause] / sum(row.values()) >= 0.9, (cause, dict(row))


def test_a_hopper_that_stands_still_has_stalled_even_out_of_support():
    task = get_task("hopper")
    hold_pose = lambda obs: np.clip(-2.0 * obs[:, 2:5] - 0.2 * obs[:, 8:11], -1.0, 1.0)  # noqa: E731  joints PD
    for episode in rollout_gym(task, hold_pose, 0, 2):
        n = len(episode.actions)
        assert n == task.horizon and not episode.events["fall"].any()
        out_of_support = np.full(n + 1, 2.0)  # the worst case: never in the data's support
        diagnosis = diagnose(task, Trajectory(episode.observations, episode.actions, episode.events,
                                              out_of_support, n), threshold=1.0)
        assert diagnosis.category == "stalled" and diagnosis.evidence["causes"]["distribution_shift"] == 0


def test_hopper_falls_are_named_by_the_torso_pitch_at_the_fall():
    task, n = get_task("hopper"), 200
    observations, fall = np.zeros((n + 1, 11)), np.zeros(n, bool)
    observations[:, hopper.FORWARD_VELOCITY], fall[150] = 2.0, True
    for pitch, category in ((0.1, "fell_forward"), (-0.3, "fell_backward")):
        observations[151, hopper.PITCH] = pitch
        diagnosis = diagnose(task, Trajectory(observations, np.zeros((n, 3)), {"fall": fall}, np.zeros(n + 1), n), 1.0)
        assert diagnosis.category == category and diagnosis.evidence["onset_step"] == 150
    assert hopper.stalled(observations, None, {"fall": np.zeros(n, bool)}, n) is None  # moving: not stalled


def maze_path(cells: list[tuple[int, int]], steps_per_cell: int = 10) -> np.ndarray:
    """Observations of an agent walking through the centres of `cells` ((col, row)) towards the goal (3.5, 1.5)."""
    centres = np.asarray(cells, float) + 0.5
    positions = np.repeat(centres, steps_per_cell, axis=0)
    return np.concatenate([positions, np.tile([3.5, 1.5], (len(positions), 1))], axis=1)


def test_maze_wrong_turn_and_stuck():
    # goal cell (col 3, row 1) on the bottom corridor; from (1, 1) the agent goes right, then turns up the left column
    towards = maze_path([(1, 1), (2, 1)])
    away = maze_path([(1, 1), (1, 2), (1, 3), (1, 4)])
    observations = np.concatenate([towards, away])
    assert maze.grid_distances(observations)[[0, 10, 20, 30]].tolist() == [2, 1, 2, 3]
    assert maze.wrong_turn(observations, None, None, len(observations) - 1) == 20  # it left (2, 1) at step 20
    assert maze.wrong_turn(towards, None, None, len(towards) - 1) is None
    parked = maze_path([(1, 1), (2, 1)], steps_per_cell=150)
    assert maze.stuck(parked, None, None, len(parked) - 1) == 150
    assert maze.stuck(observations, None, None, len(observations) - 1) is None


def test_a_trajectory_shorter_than_its_length_is_refused():
    with pytest.raises(PhysgenError, match="shorter than its length 10"):
        diagnose(FORK, Trajectory(np.zeros((5, 6)), np.zeros((4, 2)), {}, np.zeros(5), 10), 1.0)


def test_frames_are_compared_in_pixel_values_not_standardised_per_pixel():
    """A frame one level off in a pixel the data never changes is 1/255 from its training frame, not millions."""
    frames = np.random.default_rng(0).integers(0, 256, (40, 12), dtype=np.uint8)
    frames[:, 0] = 255
    support = fit_support(frames[:30], frames[30:])
    query = frames[:2].copy()
    query[:, 0] = 254
    np.testing.assert_allclose(nearest_distances(support, query), 1 / 255, rtol=0.01)  # float32 expansion
