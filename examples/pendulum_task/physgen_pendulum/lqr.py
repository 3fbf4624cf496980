"""The scripted expert: LQR about the upright equilibrium of InvertedDoublePendulum-v5's MuJoCo model.

The state is the model's (qpos, qvel): cart position, the two hinge angles (0: upright), and their velocities. The
model is linearized over one environment step (its `frame_skip` MuJoCo steps, the action held) by central finite
differences of the environment's own simulation step: MuJoCo's `mjd_transitionFD` does not support the model's RK4
integrator. The discrete Riccati equation gives the gain, and actions are clipped to the actuator's range.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from scipy.linalg import solve_discrete_are

# Costs of the state (cart position, angles, velocities) and of the action: the angles weigh most, the pendulum must
# stay upright; the cart may drift a little.
STATE_COST = np.diag([1.0, 10.0, 10.0, 0.1, 0.1, 0.1])
ACTION_COST = np.array([[1.0]])
DIFFERENCE_STEP = 1e-6

# InvertedDoublePendulum-v5 observation (gymnasium/envs/mujoco/inverted_double_pendulum_v5.py): [0] cart position,
# [1:3] sines and [3:5] cosines of the two hinge angles, [5:8] the three velocities, [8] a constraint force.
CART, SINES, COSINES, VELOCITIES = 0, slice(1, 3), slice(3, 5), slice(5, 8)


def linearize(env: gym.Env) -> tuple[np.ndarray, np.ndarray]:
    """(A, B) of x' = A x + B u about the upright rest (x = 0, u = 0), x' the state one step of the Gymnasium MuJoCo
    environment `env` later (stepped through its simulation, not `step`: no episode, no observation clipping)."""
    sim = env.unwrapped
    nq, nu = sim.model.nq, sim.model.nu

    def step(state: np.ndarray, action: np.ndarray) -> np.ndarray:
        sim.set_state(state[:nq], state[nq:])
        sim.do_simulation(action, sim.frame_skip)
        return np.concatenate([sim.data.qpos, sim.data.qvel])

    def jacobian(f, size: int) -> np.ndarray:
        columns = [(f(DIFFERENCE_STEP * e) - f(-DIFFERENCE_STEP * e)) / (2 * DIFFERENCE_STEP) for e in np.eye(size)]
        return np.stack(columns, axis=1)

    rest, still = np.zeros(nq + sim.model.nv), np.zeros(nu)
    return jacobian(lambda dx: step(rest + dx, still), len(rest)), jacobian(lambda du: step(rest, still + du), nu)


def lqr_gain(a: np.ndarray, b: np.ndarray, q: np.ndarray, r: np.ndarray) -> np.ndarray:
    """K of the infinite-horizon discrete LQR, u = -K x."""
    p = solve_discrete_are(a, b, q, r)
    return np.linalg.solve(r + b.T @ p @ b, b.T @ p @ a)


def observation_state(obs: np.ndarray) -> np.ndarray:
    """The model state (..., 6) of observations (..., 9): the angles recovered from their sines and cosines."""
    angles = np.arctan2(obs[..., SINES], obs[..., COSINES])
    return np.concatenate([obs[..., CART:CART + 1], angles, obs[..., VELOCITIES]], axis=-1)


class LQRExpert:
    """Observations (batch, 9) -> actions (batch, 1): u = -K x, clipped to the action bounds."""

    def __init__(self, gain: np.ndarray, low: np.ndarray, high: np.ndarray):
        self.gain, self.low, self.high = gain, low, high

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return np.clip(-observation_state(np.asarray(obs)) @ self.gain.T, self.low, self.high).astype(np.float32)


def lqr_expert(env: gym.Env) -> LQRExpert:
    """The LQR expert of a Gymnasium InvertedDoublePendulum environment, its gain computed from the environment's
    model (the environment is left at an arbitrary state: reset it before use)."""
    gain = lqr_gain(*linearize(env), STATE_COST, ACTION_COST)
    return LQRExpert(gain, env.action_space.low, env.action_space.high)
