"""`hopper`: Gymnasium's `Hopper-v5` (MuJoCo), 125 Hz, 1000 steps.

Success: the hopper does not fall (no unhealthy termination) for the full 1000-step episode and its return reaches
at least 80% of the expert dataset's mean return. Frames come from MuJoCo's offscreen renderer: `MUJOCO_GL=egl`
(chosen by `make_env` unless set; Mesa's EGL also renders on CPU-only machines).
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from importlib import resources

import gymnasium as gym
import numpy as np

from physgen.envs.base import STANDARD_POLICY_BUDGETS, Recipe, Task, box
from physgen.errors import PhysgenError

GYM_ID = "Hopper-v5"
HORIZON = 1000
SUCCESS_RETURN_FRACTION = 0.8
# Hopper-v5 observation: [0] torso height, [1] torso pitch (positive: leaning forward), [5] torso forward velocity
HEIGHT, PITCH, FORWARD_VELOCITY = 0, 1, 5
STALL_SPEED = 0.2  # m/s on average over the episode: the experts hop forward at over 2 m/s


class FallEvents(gym.Wrapper):
    """Adds `info["events"] = {"fall": ...}`: Hopper-v5 terminates exactly when the hopper becomes unhealthy."""

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return obs, {**info, "events": {"fall": False}}

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, {**info, "events": {"fall": bool(terminated)}}


EXPERTS = resources.files("physgen") / "experts" / "hopper"  # PPO checkpoints (README.md there)


def make_env(render_mode: str | None = None) -> gym.Env:
    prefer_offscreen_gl()
    return FallEvents(gym.make(GYM_ID, render_mode=render_mode))


def prefer_offscreen_gl() -> None:
    """MuJoCo picks its OpenGL backend when it is first imported, which `gym.make` does: offscreen EGL (Mesa renders
    it on CPU-only machines too), unless the user chose one, MuJoCo is loaded already, or there is no EGL library."""
    if "mujoco" not in sys.modules and ctypes.util.find_library("EGL"):
        os.environ.setdefault("MUJOCO_GL", "egl")


def success(events: dict[str, np.ndarray], episode_return: float, length: int, expert_return: float | None) -> bool:
    if expert_return is None:
        raise PhysgenError("hopper's success rule needs the expert dataset's mean return; generate the dataset with "
                           "`physgen data --task hopper` and pass its ref_max_score")
    return bool(length >= HORIZON and not np.any(events["fall"])
                and episode_return >= SUCCESS_RETURN_FRACTION * expert_return)


def _fall_step(events) -> int | None:
    fell = np.asarray(events["fall"], bool)
    return int(fell.argmax()) if fell.any() else None


def fell_forward(observations, actions, events, length) -> int | None:
    """The fall's step when the torso pitched forward (pitch >= 0) as the hopper became unhealthy."""
    step = _fall_step(events)
    return step if step is not None and observations[step + 1, PITCH] >= 0 else None


def fell_backward(observations, actions, events, length) -> int | None:
    """The fall's step when the torso pitched backward (pitch < 0) as the hopper became unhealthy."""
    step = _fall_step(events)
    return step if step is not None and observations[step + 1, PITCH] < 0 else None


def stalled(observations, actions, events, length) -> int | None:
    """Onset 0 when the hopper stayed up but made no progress: no fall, mean forward speed below `STALL_SPEED`."""
    moving = observations[:length, FORWARD_VELOCITY].mean() >= STALL_SPEED
    return None if _fall_step(events) is not None or moving else 0


TASK = Task(
    name="hopper",
    summary="Gymnasium Hopper-v5 (MuJoCo): hop forward without falling.",
    observation_space=box(-np.inf, np.inf, 11),
    action_space=box(-1.0, 1.0, 3),
    control_hz=125.0,
    horizon=HORIZON,
    success_rule="no fall for all 1000 steps and return >= 80% of the expert dataset's mean return",
    events=("fall",),
    failure_events=("fall",),
    failure_detectors={"fell_forward": fell_forward, "fell_backward": fell_backward, "stalled": stalled},
    demonstrations="PPO checkpoints shipped with physgen (physgen/experts/hopper): expert, and medium (an earlier "
                   "checkpoint of the same run at about half the expert's return); deterministic mean actions",
    gym_id=GYM_ID,
    make_env=make_env,
    success=success,
    demonstrators={level: EXPERTS / level for level in ("expert", "medium")},
    datasets=("expert", "medium"),
    dataset_episodes=100,
    # chosen over 10 seeds each (docs/recipes.md): short chunks executed one action at a time
    recipe=Recipe(policy={"action_steps": 4, "exec_steps": 1},
                  methods={"flow": {"target": "sample"}},
                  budgets={"smoke": STANDARD_POLICY_BUDGETS["smoke"],
                           "quick": {"steps": 8_000, "batch_size": 128, "hidden": 256, "learning_rate": 2e-3},
                           "full": {"steps": 30_000, "batch_size": 256, "hidden": 256}},
                  # predicting the clean chunk learns faster; the full budget keeps the targets measured at 30,000
                  # steps (epsilon prediction ended steadier over seeds)
                  method_budgets={("diffusion", "full"): {"prediction": "epsilon"},
                                  ("flow", "full"): {"target": "velocity"}}),
)
