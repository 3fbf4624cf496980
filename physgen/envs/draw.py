"""Frames for the 2-D tasks, drawn with numpy (no display, no OpenGL)."""

from __future__ import annotations

import numpy as np

BACKGROUND = (245, 245, 240)
OBSTACLE = (90, 90, 100)
WALL = (60, 60, 70)
GOAL = (60, 170, 90)
AGENT = (210, 60, 50)


class Canvas:
    """A square RGB image over the world rectangle `xlim` x `ylim`, y pointing up."""

    def __init__(self, size: int, xlim: tuple[float, float], ylim: tuple[float, float]):
        self.image = np.empty((size, size, 3), np.uint8)
        self.image[:] = BACKGROUND
        centers = (np.arange(size) + 0.5) / size
        self.x = xlim[0] + centers * (xlim[1] - xlim[0])
        self.y = ylim[1] - centers * (ylim[1] - ylim[0])

    def disk(self, center, radius: float, color) -> None:
        mask = (self.x[None, :] - center[0]) ** 2 + (self.y[:, None] - center[1]) ** 2 <= radius**2
        self.image[mask] = color

    def rect(self, lower, upper, color) -> None:
        cols = (self.x >= lower[0]) & (self.x < upper[0])
        rows = (self.y >= lower[1]) & (self.y < upper[1])
        self.image[np.ix_(rows, cols)] = color
