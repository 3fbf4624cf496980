import dataclasses
import os
import subprocess
import sys

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from physgen import PhysgenError
from physgen.envs import fork, get_task, list_tasks, maze, push
from physgen.envs.rollout import episode_seeds, expert_policy, random_policy, rollout_gym, rollout_jax


def test_registry_lists_builtin_tasks_and_names_unknown_ones():
    names = [t.name for t in list_tasks()]  # with any task plugins installed in this environment, by name
    assert names == sorted(names) and {"fork", "hopper", "maze", "push"} <= set(names)
    with pytest.raises(PhysgenError, match="unknown task 'nope'; known tasks: .*fork.*hopper.*maze.*push"):
        get_task("nope")


@pytest.mark.parametrize("name", ["fork", "maze", "push"])
def test_reset_and_step_are_pure_functions_of_key_and_state(name):
    fns = get_task(name).functional
    state_a, obs_a = fns.reset(jax.random.key(7))
    state_b, obs_b = fns.reset(jax.random.key(7))
    _, obs_c = fns.reset(jax.random.key(8))
    np.testing.assert_array_equal(obs_a, obs_b)
    assert not np.array_equal(obs_a, obs_c)
    action = jnp.array([0.3, -0.7])
    out_a, out_b = fns.step(state_a, action), fns.step(state_b, action)
    for leaf_a, leaf_b in zip(jax.tree.leaves(out_a), jax.tree.leaves(out_b)):
        np.testing.assert_array_equal(leaf_a, leaf_b)


def test_fork_step_moves_at_commanded_velocity_and_flags_collision_and_goal():
    state = fork.ForkState(jnp.array([1.0, -1.0]), jnp.zeros(2), jnp.array([0.0, 1.0]), jnp.float32(1), jnp.int32(0),
                           jnp.bool_(False))
    out = fork.step(state, jnp.array([1.0, 0.5]))
    np.testing.assert_allclose(out.state.pos, [1.0 + fork.DT * fork.MAX_SPEED, -1.0 + 0.5 * fork.DT * fork.MAX_SPEED], rtol=1e-6)
    np.testing.assert_allclose(out.obs, [*out.state.pos, 1.0, 0.5, 0.0, 1.0])
    assert not out.terminated and not out.events["collision"]
    # One step into the obstacle: collision, reward = progress - 1, episode over and frozen afterwards.
    near = state._replace(pos=jnp.array([0.0, -fork.OBSTACLE_RADIUS - 0.01]))
    hit = fork.step(near, jnp.array([0.0, 1.0]))
    assert hit.events["collision"] and hit.terminated and not hit.events["goal_reached"]
    np.testing.assert_allclose(hit.reward, fork.DT * fork.MAX_SPEED - 1.0, rtol=1e-5)
    after = fork.step(hit.state, jnp.array([0.0, 1.0]))
    assert after.reward == 0 and not after.terminated and not after.events["collision"]
    np.testing.assert_array_equal(after.state.pos, hit.state.pos)
    at_goal = fork.step(state._replace(pos=jnp.array([0.0, 1.0 - fork.GOAL_RADIUS - 0.01])), jnp.array([0.0, 1.0]))
    assert at_goal.events["goal_reached"] and at_goal.terminated


def test_fork_expert_succeeds_and_is_bimodal():
    task = get_task("fork")
    episodes = rollout_jax(task, expert_policy(task), seed=0, episodes=400)
    assert all(task.success(e.events, e.episode_return, e.length, None) for e in episodes)
    # The x coordinate where each episode crosses the obstacle's height tells the side it passed on.
    crossing_x = np.array([e.observations[np.argmax(e.observations[:, 1] >= 0), 0] for e in episodes])
    assert np.all(np.abs(crossing_x) > fork.OBSTACLE_RADIUS)
    left = np.mean(crossing_x < 0)
    assert 0.42 < left < 0.58  # 1/2 within 3.2 binomial standard deviations for 400 episodes


def mean_of_modes(expert):
    """A policy acting with the mean of `expert`'s actions for either side of the episode."""
    return lambda state, obs, key: 0.5 * (expert(state._replace(side=1.0), key)
                                          + expert(state._replace(side=-1.0), key))


def test_fork_averaging_the_two_modes_drives_into_the_obstacle():
    task = get_task("fork")
    episodes = rollout_jax(task, mean_of_modes(fork.expert), seed=0, episodes=200)
    collided = np.mean([e.events["collision"].any() for e in episodes])
    assert collided > 0.9


def push_state(pusher, puck, goal=(0.0, -0.6), side=1.0):
    return push.PushState(jnp.array(pusher, jnp.float32), jnp.zeros(2), jnp.array(puck, jnp.float32),
                          jnp.array(goal, jnp.float32), jnp.float32(side), jnp.int32(0), jnp.bool_(False))


def test_push_moves_the_puck_along_the_line_of_centres_until_they_touch():
    speed = push.DT * push.MAX_SPEED
    # Head on: the puck moves by the pusher's step, straight ahead, and they just touch.
    state = push_state([0.0, 0.3], [0.0, 0.3 - push.TOUCH])
    out = push.step(state, jnp.array([0.0, -1.0]))
    np.testing.assert_allclose(out.state.pusher, [0.0, 0.3 - speed], atol=1e-6)
    np.testing.assert_allclose(out.state.puck, [0.0, 0.3 - push.TOUCH - speed], atol=1e-6)
    assert out.events["contact"] and not out.terminated
    np.testing.assert_allclose(out.reward, speed, rtol=1e-4)  # the puck came `speed` nearer the goal below it
    np.testing.assert_allclose(out.obs, [*out.state.pusher, 0.0, -1.0, *out.state.puck, 0.0, -0.6], atol=1e-6)
    # Off centre by d: the puck moves along the line of centres, to the side away from the pusher.
    d = 0.05
    state = push_state([0.0, 0.3], [d, 0.3 - np.sqrt(push.TOUCH**2 - d**2) + 1e-4])
    out = push.step(state, jnp.array([0.0, -1.0]))
    offset = np.asarray(out.state.puck - out.state.pusher)
    np.testing.assert_allclose(np.linalg.norm(offset), push.TOUCH, rtol=1e-5)
    assert out.state.puck[0] > d
    # Apart: nothing moves but the pusher.
    apart = push.step(push_state([0.0, 0.3], [0.5, 0.3]), jnp.array([1.0, 0.0]))
    np.testing.assert_array_equal(apart.state.puck, np.float32([0.5, 0.3]))
    assert not apart.events["contact"]


def test_push_off_the_table_ends_the_episode_as_a_failure_and_freezes_it():
    edge = push.TABLE - 0.005
    state = push_state([edge - push.TOUCH, 0.0], [edge, 0.0], goal=(0.0, 0.0))
    out = push.step(state, jnp.array([1.0, 0.0]))
    assert out.events["off_table"] and out.terminated and not out.events["goal_reached"]
    np.testing.assert_allclose(out.reward, -push.DT * push.MAX_SPEED - 1.0, rtol=1e-4)
    after = push.step(out.state, jnp.array([1.0, 0.0]))
    assert after.reward == 0 and not after.events["off_table"]
    np.testing.assert_array_equal(after.state.puck, out.state.puck)
    near = push.GOAL_RADIUS + 0.01
    at_goal = push.step(push_state([0.0, near + push.TOUCH], [0.0, near], goal=(0.0, 0.0)), jnp.array([0.0, -1.0]))
    assert at_goal.events["goal_reached"] and at_goal.terminated


def test_push_expert_succeeds_by_going_round_the_puck_on_either_side():
    task = get_task("push")
    episodes = rollout_jax(task, expert_policy(task), seed=0, episodes=400)
    assert all(task.success(e.events, e.episode_return, e.length, None) for e in episodes)
    assert max(e.length for e in episodes) < 0.8 * task.horizon
    # Where the pusher first gets level with the puck's start, it is left or right of it: the side it went round on.
    sides = []
    for e in episodes:
        level = np.argmax(e.observations[:, 1] >= e.observations[0, 5])
        sides.append(np.sign(e.observations[level, 0] - e.observations[level, 4]))
    left = np.mean(np.array(sides) < 0)
    assert 0.42 < left < 0.58  # 1/2 within 3.2 binomial standard deviations for 400 episodes


def test_push_averaging_the_two_modes_stalls_in_front_of_the_puck():
    task = get_task("push")
    episodes = rollout_jax(task, mean_of_modes(push.expert), seed=0, episodes=200)
    assert not any(task.success(e.events, e.episode_return, e.length, None) for e in episodes)
    assert all(e.length == task.horizon for e in episodes)
    assert all(push.never_pushed(e.observations, e.actions, e.events, e.length) == 0 for e in episodes)


def test_push_a_puck_moved_away_from_the_goal_was_pushed_away_from_when_it_began_to_move():
    # The goal 0.5 below the puck; the puck still for steps 0-3, then 0.02 farther each step, then back a little.
    puck_y = np.r_[np.zeros(4), 0.02 * np.arange(1, 9), 0.15]
    observations = np.zeros((len(puck_y), 8))
    observations[:, 5], observations[:, 7] = puck_y, -0.5
    events = {"contact": np.r_[np.zeros(3, bool), np.ones(len(puck_y) - 4, bool)]}
    length = len(puck_y) - 1
    assert push.pushed_away(observations, None, events, length) == 3  # 0.12 at step 9 is 0.1 farther: it began at 3
    assert push.pushed_away(observations[:9], None, events, 8) is None  # 0.1 farther at most
    assert push.never_pushed(observations, None, events, length) is None
    assert push.never_pushed(observations, None, {"contact": np.zeros(length, bool)}, length) == 0


def test_maze_distance_field_counts_grid_steps():
    goal = jnp.array([1, 1])  # bottom-left free cell
    d = np.asarray(maze.distance_field(goal))
    assert d[1, 1] == 0 and d[1, 7] == 6 and d[7, 1] == 6 and d[7, 7] == 12
    assert d[0, 0] == maze.FAR and d[2, 2] == maze.FAR  # walls


def test_maze_walls_stop_the_agent_and_flag_contact():
    state, _ = maze.reset(jax.random.key(0))
    state = state._replace(pos=jnp.array([1.5, 1.5]))  # centre of the bottom-left corner cell
    out = maze.step(state, jnp.array([-1.0, 0.0]))  # towards the outer wall, 0.06 cells per step
    for _ in range(10):
        out = maze.step(out.state, jnp.array([-1.0, 0.0]))
    np.testing.assert_allclose(out.state.pos[0], 1.0 + maze.AGENT_RADIUS, atol=0.061)
    assert out.state.pos[0] >= 1.0 + maze.AGENT_RADIUS
    assert out.events["wall_contact"]


def test_maze_expert_reaches_random_goals_by_more_than_one_route():
    task = get_task("maze")
    episodes = rollout_jax(task, expert_policy(task), seed=0, episodes=200)
    assert np.mean([task.success(e.events, e.episode_return, e.length, None) for e in episodes]) >= 0.99
    assert max(e.length for e in episodes) < task.horizon

    # Corner to opposite corner with different route choices: the sequences of visited cells differ.
    state, _ = maze.reset(jax.random.key(0))
    state = state._replace(pos=jnp.array([1.5, 1.5]), goal=jnp.array([7.5, 7.5]),
                           distance=maze.distance_field(jnp.array([7, 7])))

    def drive(tie_break):
        def one_step(s, _):
            s = maze.step(s, maze.expert(s, None)).state
            return s, s.pos

        final, positions = jax.lax.scan(one_step, state._replace(tie_break=tie_break), None, task.horizon)
        return final.done, positions

    tie_breaks = 0.5 * jax.random.uniform(jax.random.key(1), (8, *maze.WALLS.shape))
    done, positions = jax.jit(jax.vmap(drive))(tie_breaks)
    assert np.all(done)
    assert np.all(np.linalg.norm(np.asarray(positions[:, -1]) - np.array([7.5, 7.5]), axis=1) < maze.GOAL_RADIUS)
    routes = set()
    for path in np.floor(np.asarray(positions)).astype(int):
        changes = np.any(path[1:] != path[:-1], axis=1)
        routes.add(tuple(map(tuple, path[np.concatenate([[True], changes])])))
    assert len(routes) >= 2


@pytest.mark.parametrize("name", ["fork", "maze", "push"])
def test_gymnasium_registration_passes_check_env_and_matches_rollout_seeds(name):
    task = get_task(name)
    env = gym.make(f"physgen/{name.capitalize()}-v0", render_mode="rgb_array")
    check_env(env.unwrapped)
    episode = rollout_jax(task, expert_policy(task), seed=5, episodes=1)[0]
    obs, info = env.reset(seed=episode.seed)
    np.testing.assert_array_equal(obs, episode.observations[0])
    assert info["events"] == {e: False for e in task.events}
    for action, expected in zip(episode.actions[:5], episode.observations[1:6]):
        obs, *_ = env.step(action)
        np.testing.assert_allclose(obs, expected, rtol=1e-6)
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    assert np.any(np.all(frame == (210, 60, 50), axis=-1))  # the agent is drawn


@pytest.mark.parametrize("name", ["fork", "maze", "push"])
def test_render_is_jittable_and_vmappable_over_states(name):
    fns = get_task(name).functional
    states = jax.vmap(lambda key: fns.reset(key)[0])(jax.random.split(jax.random.key(0), 3))
    frames = jax.vmap(lambda state: fns.render(state, 32))(states)
    assert frames.shape == (3, 32, 32, 3) and frames.dtype == jnp.uint8
    for i in range(3):
        np.testing.assert_array_equal(frames[i], fns.render(jax.tree.map(lambda x: x[i], states), 32))
    assert not np.array_equal(frames[0], frames[1])


def test_frames_show_the_scene_at_its_size():
    colour_count = lambda frame, colour: int(np.all(np.asarray(frame) == colour, axis=-1).sum())
    # maze at 10 pixels a cell: every wall cell is 100 wall pixels; the agent's square (0.3 cells) is 3 x 3
    state, _ = maze.reset(jax.random.key(0))
    frame = maze.render(state._replace(pos=jnp.array([1.52, 1.52]), goal=jnp.array([7.5, 7.5])), 90)
    assert colour_count(frame, (60, 60, 70)) == 100 * maze.WALLS.sum()
    assert colour_count(frame, (210, 60, 50)) == 9
    # fork at 1/40 unit a pixel: the obstacle's disk covers its area, pi r^2, to within its rim's pixels
    state, _ = fork.reset(jax.random.key(0))
    frame = fork.render(state._replace(pos=jnp.array([1.0, -1.0])), 120)
    pixel = 2 * fork.ARENA / 120
    area = np.pi * fork.OBSTACLE_RADIUS**2 / pixel**2
    assert abs(colour_count(frame, (90, 90, 100)) - area) < 2 * np.pi * fork.OBSTACLE_RADIUS / pixel


def test_hopper_is_gymnasium_hopper_with_fall_events_and_seeded_resets():
    task = get_task("hopper")
    first = rollout_gym(task, None, seed=1, episodes=2)
    again = rollout_gym(task, None, seed=1, episodes=2)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.observations, b.observations)
        assert a.observations.shape[1] == task.obs_dim and a.actions.shape[1] == task.act_dim
        np.testing.assert_array_equal(a.events["fall"], a.terminations)
    assert [e.seed for e in first] == [int(s) for s in episode_seeds(1, 2)]
    for episode in first:  # recorded in place, the first observation once came out as the last one
        np.testing.assert_array_equal(episode.observations[0], task.make_env().reset(seed=episode.seed)[0])
        np.testing.assert_array_equal(episode.observations[1:], rollout_gym_steps(task, episode))


def rollout_gym_steps(task, episode):
    """The observations after each of `episode`'s actions, stepped anew from its seed."""
    env = task.make_env()
    env.reset(seed=episode.seed)
    return np.stack([env.step(action)[0] for action in episode.actions])


def test_hopper_success_rule():
    success = get_task("hopper").success
    no_fall = {"fall": np.zeros(1000, bool)}
    assert success(no_fall, 2400.0, 1000, 3000.0)
    assert not success(no_fall, 2300.0, 1000, 3000.0)  # below 80% of the expert
    assert not success({"fall": np.eye(1, 500, 499, dtype=bool)[0]}, 2900.0, 500, 3000.0)
    with pytest.raises(PhysgenError, match="expert dataset's mean return"):
        success(no_fall, 2400.0, 1000, None)


def test_an_episode_that_never_ends_lasts_the_whole_horizon():
    task = get_task("fork")
    step = task.functional.step

    def endless(state, action):
        return step(state, action)._replace(terminated=jnp.bool_(False), truncated=jnp.bool_(False))

    never_ends = dataclasses.replace(task, functional=task.functional._replace(step=endless))
    episodes = rollout_jax(never_ends, random_policy(never_ends), seed=0, episodes=2)
    assert [e.length for e in episodes] == [task.horizon] * 2
    assert [len(e.observations) for e in episodes] == [task.horizon + 1] * 2


def test_importing_physgen_chooses_no_gl_or_plotting_backend():
    code = ("import os, sys; import physgen.envs, physgen.data, physgen.policies, physgen.world_models, physgen.bench, "
            "physgen.bench.report, physgen.bench.sweep, physgen.control, physgen.cli; "
            "print('MUJOCO_GL' in os.environ, 'matplotlib.pyplot' in sys.modules, 'mujoco' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "MPLBACKEND")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "False"]
