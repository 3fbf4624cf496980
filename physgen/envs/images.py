"""A pure-JAX task seen through its camera: `with_camera(task)` is the same task whose observation is its rendered
frame instead of its state vector (`fork-image`, `maze-image`, `push-image` are built in).

The observation is an `IMAGE_SIZE` x `IMAGE_SIZE` RGB frame, uint8, flattened row by row (height, width, channel)
into one vector, as Gymnasium's `FlattenObservation` would: every layer that holds observation vectors (datasets,
windows, rollouts, the controller) holds frames unchanged, and an image policy reshapes them (its `image_size`).
Frames are drawn at `SUPERSAMPLE` times the size and averaged down, so that an object smaller than a pixel (fork's
point mass is 0.6 pixels across at 32) still shows, as a fainter pixel, and moves smoothly between pixels.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np

from physgen.envs.base import FunctionalEnv, Recipe, Task
from physgen.envs.rollout import replay

IMAGE_SIZE = 32
SUPERSAMPLE = 4
SUFFIX = "-image"


def camera(render, state, size: int = IMAGE_SIZE) -> jax.Array:
    """The flattened uint8 frame (size * size * 3,) of `state`, drawn by `render` at `SUPERSAMPLE` x the size."""
    big = render(state, size * SUPERSAMPLE).astype(jnp.float32)
    small = big.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE, 3).mean(axis=(1, 3))
    return jnp.round(small).astype(jnp.uint8).reshape(-1)


def observes_frames(task: Task) -> bool:
    """Whether `task`'s observations are camera frames (uint8 pixel values), not a state vector."""
    return task.observation_space.dtype == np.uint8


def image_shape(task: Task) -> tuple[int, int, int]:
    """(height, width, 3) of the frames an image task observes."""
    side = int(round((task.obs_dim / 3) ** 0.5))
    return side, side, 3


def with_camera(task: Task, recipe: Recipe, size: int = IMAGE_SIZE) -> Task:
    """`task` observed through its camera at `size` x `size` pixels, named `<task>-image`.

    Its failures are categorized by the state task's detectors, which read the state vectors behind the frames:
    those of the state task replayed with the episode's actions. `recipe`: the policy settings that work on its frames,
    `image_size` among them (a policy trained without it takes it from the frames)."""
    functional = task.functional
    frame = partial(camera, functional.render, size=size)

    def reset(key):
        state, _ = functional.reset(key)
        return state, frame(state)

    def step(state, action):
        result = functional.step(state, action)
        return result._replace(obs=frame(result.state))

    gym_id = task.gym_id.replace("-v", "Image-v")
    return dataclasses.replace(
        task, name=task.name + SUFFIX, summary=f"{task.summary} Seen as {size}x{size} RGB frames.",
        observation_space=gym.spaces.Box(0, 255, (size * size * 3,), np.uint8), gym_id=gym_id,
        make_env=partial(gym.make, gym_id), recipe=recipe,
        detector_observations=partial(replay, task),
        functional=FunctionalEnv(reset, step, functional.expert, functional.render))
