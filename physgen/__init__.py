"""physgen: generative models for physical AI in JAX."""

from physgen.errors import PhysgenError

__all__ = ["PhysgenError"]
__version__ = "0.1.0"
