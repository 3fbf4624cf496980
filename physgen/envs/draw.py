"""Frames for the 2-D tasks, drawn in JAX: jittable and vmappable, so that a task renders many states in one call
(image VAEs' training frames) and the same drawing can serve as a camera inside compiled rollouts."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

BACKGROUND = (245, 245, 240)
OBSTACLE = (90, 90, 100)
WALL = (60, 60, 70)
GOAL = (60, 170, 90)
AGENT = (210, 60, 50)


class Canvas(NamedTuple):
    """A square RGB image over a world rectangle, y pointing up; `x` and `y` are the pixel centres' coordinates
    (columns left to right, rows top to bottom). Drawing returns a new canvas."""

    image: jax.Array  # (size, size, 3) uint8
    x: jax.Array  # (size,)
    y: jax.Array  # (size,)

    def paint(self, mask: jax.Array, color) -> "Canvas":
        return self._replace(image=jnp.where(mask[..., None], jnp.asarray(color, jnp.uint8), self.image))

    def disk(self, center, radius: float, color) -> "Canvas":
        return self.paint((self.x[None, :] - center[0]) ** 2 + (self.y[:, None] - center[1]) ** 2 <= radius**2, color)

    def rect(self, lower, upper, color) -> "Canvas":
        cols = (self.x >= lower[0]) & (self.x < upper[0])
        rows = (self.y >= lower[1]) & (self.y < upper[1])
        return self.paint(rows[:, None] & cols[None, :], color)

    def grid(self, cells: np.ndarray, color) -> "Canvas":
        """Paint the unit cells marked in `cells[row, col]` (row 0 at y in [0, 1)); the world's lower left corner
        must be (0, 0)."""
        rows = jnp.clip(jnp.floor(self.y).astype(jnp.int32), 0, cells.shape[0] - 1)
        cols = jnp.clip(jnp.floor(self.x).astype(jnp.int32), 0, cells.shape[1] - 1)
        return self.paint(jnp.asarray(cells)[rows[:, None], cols[None, :]], color)


def canvas(size: int, xlim: tuple[float, float], ylim: tuple[float, float], color=BACKGROUND) -> Canvas:
    centers = (jnp.arange(size, dtype=jnp.float32) + 0.5) / size
    image = jnp.broadcast_to(jnp.asarray(color, jnp.uint8), (size, size, 3))
    return Canvas(image, xlim[0] + centers * (xlim[1] - xlim[0]), ylim[1] - centers * (ylim[1] - ylim[0]))
