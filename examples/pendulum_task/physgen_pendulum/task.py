"""`pendulum`: Gymnasium's `InvertedDoublePendulum-v5` (MuJoCo), 20 Hz, 200 steps.

Success: the pendulum stays up (no termination: the tip of the second pole stays above 1 m) for all 200 steps.
Demonstrations: the LQR expert of `physgen_pendulum.lqr`. Frames come from MuJoCo's offscreen renderer, as hopper's.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from physgen.envs import Task
from physgen.envs.base import Recipe, box
from physgen.envs.hopper import FallEvents, prefer_offscreen_gl
from physgen_pendulum.lqr import LQRExpert, lqr_expert

GYM_ID = "InvertedDoublePendulum-v5"
HORIZON = 200  # 10 s: long enough to tell balancing from falling slowly, short enough for a quick smoke bench
CONTROL_HZ = 20.0  # the model's 0.01 s time step times the environment's frame_skip of 5


def make_env(render_mode: str | None = None) -> gym.Env:
    """The environment, truncated at the horizon, with `info["events"]["fall"]` (v5 terminates exactly when the
    pendulum falls)."""
    prefer_offscreen_gl()
    return FallEvents(gym.make(GYM_ID, render_mode=render_mode, max_episode_steps=HORIZON))


def expert() -> LQRExpert:
    """The LQR expert, its gain computed from the environment's own model."""
    env = make_env()
    try:
        return lqr_expert(env)
    finally:
        env.close()


def success(events: dict[str, np.ndarray], episode_return: float, length: int, expert_return: float | None) -> bool:
    return bool(length >= HORIZON and not np.any(events["fall"]))


TASK = Task(
    name="pendulum",
    summary="Gymnasium InvertedDoublePendulum-v5 (MuJoCo): balance a double pendulum on a cart (a plugin example).",
    observation_space=box(-np.inf, np.inf, 9),
    action_space=box(-1.0, 1.0, 1),
    control_hz=CONTROL_HZ,
    horizon=HORIZON,
    success_rule=f"no fall (the tip of the second pole stays above 1 m) for all {HORIZON} steps",
    events=("fall",),
    failure_events=("fall",),
    demonstrations="LQR about the upright equilibrium (the MuJoCo model linearized by finite differences, the "
                   "discrete Riccati gain), actions clipped to [-1, 1]",
    gym_id=GYM_ID,
    make_env=make_env,
    success=success,
    demonstrators={"expert": expert},
    datasets=("expert",),
    dataset_episodes=100,  # at least 100: the dataset's mean return is then the expert's reference score
    recipe=Recipe(),  # physgen's standard budgets, not tuned for this task
)
