"""Gymnasium view of a pure-JAX task (`physgen/Fork-v0`, `physgen/Maze-v0`, `physgen/Push-v0`): one jitted call per
step."""

from __future__ import annotations

import gymnasium as gym
import jax
import numpy as np

from physgen.envs.registry import get_task
from physgen.envs.rollout import reset_key


class JaxGymEnv(gym.Env):
    """Steps a task's pure-JAX `reset`/`step`; `info["events"]` holds the step's events.

    `reset(seed=s)` starts from the same state as episode seed `s` of `physgen.envs.rollout`.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(self, task: str, render_mode: str | None = None):
        self.task = get_task(task)
        self.observation_space = self.task.observation_space
        self.action_space = self.task.action_space
        self.metadata = {**self.metadata, "render_fps": self.task.control_hz}
        self.render_mode = render_mode
        self._reset = jax.jit(self.task.functional.reset)
        self._step = jax.jit(self.task.functional.step)
        self._state = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        key = reset_key(seed if seed is not None else int(self.np_random.integers(2**31)))
        self._state, obs = self._reset(key)
        return np.asarray(obs), {"events": {name: False for name in self.task.events}}

    def step(self, action):
        result = jax.device_get(self._step(self._state, np.asarray(action, np.float32)))
        self._state = result.state
        events = {name: bool(flag) for name, flag in result.events.items()}
        return result.obs, float(result.reward), bool(result.terminated), bool(result.truncated), {"events": events}

    def render(self):
        return np.asarray(self.task.functional.render(self._state))
