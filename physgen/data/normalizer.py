"""Per-dimension affine normalizers, fitted on the training split and saved with whatever is trained on them."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

MODES = ("minmax", "gaussian")


class Normalizer(NamedTuple):
    """`normalize(x) = (x - shift) / scale`; a pytree, so it is jittable and saved by orbax like parameters."""

    shift: jnp.ndarray
    scale: jnp.ndarray

    @classmethod
    def fit(cls, x, mode: str = "minmax", eps: float = 1e-6) -> "Normalizer":
        """`minmax` maps each dimension's [min, max] onto [-1, 1] (Diffusion Policy's choice for actions);
        `gaussian` gives zero mean and unit variance. A constant dimension is shifted to 0 and left unscaled."""
        x = np.asarray(x, np.float64).reshape(-1, np.shape(x)[-1])
        if mode == "minmax":
            low, high = x.min(0), x.max(0)
            shift, scale = (high + low) / 2, (high - low) / 2
        elif mode == "gaussian":
            shift, scale = x.mean(0), x.std(0)
        else:
            raise ValueError(f"unknown normalizer mode {mode!r}; choose one of {MODES}")
        scale = np.where(scale < eps, 1.0, scale)
        return cls(jnp.asarray(shift, jnp.float32), jnp.asarray(scale, jnp.float32))

    def normalize(self, x):
        return (x - self.shift) / self.scale

    def unnormalize(self, y):
        return y * self.scale + self.shift
