"""physgen: generative models for physical AI in JAX."""

import ctypes.util
import os

from physgen.errors import PhysgenError

# MuJoCo picks its OpenGL backend when it is first imported: offscreen EGL (Mesa renders it on CPU-only machines
# too) unless the user chose one, or the machine has no EGL library.
if ctypes.util.find_library("EGL"):
    os.environ.setdefault("MUJOCO_GL", "egl")

__all__ = ["PhysgenError"]
__version__ = "0.1.0"
