"""Weight-only quantization of a policy's parameters: weights stored as int8 or bfloat16, computed in float32.

    stored = quantize(state.params, "int8")      # int8 values and float32 scales in place of every weight matrix
    params = dequantize(stored)                  # float32 again, inside the compiled sampler

Weight-only: the sampler's activations, normalizers and arithmetic stay float32; only the weight matrices (Linear
kernels, the U-Net's convolution kernels: every floating array of ndim >= 2) are stored in fewer bits. The sampler
runs a batch of one history, so its matrix products are matrix-vector products that read each weight once: storing
the weights smaller is what could make them faster where reading them from memory is the limit, and it makes an
exported file smaller. Biases and norms (ndim < 2) are few numbers and stay float32.

int8 is symmetric with one scale per output channel (the last axis): scale = max|w| / 127 over the other axes, so
each output unit keeps its own range (one scale for the whole matrix would round a unit with small weights to a few
levels), and the error of each weight is at most half its channel's scale.

On XLA:CPU a quantized sampler is smaller, not faster. Its matrix products (library kernels such as XNNPACK's) take
float32 operands, so the compiled program is the float32 program plus one loop fusion per weight matrix that writes a
float32 copy of it (convert, times the scales for int8) at every call; the products then read float32 weights as
before. The quantized program therefore adds a pass over the weights and saves the products no memory traffic; and a
policy of physgen's default size is small enough for its float32 weights to stay in the CPU's cache between calls.
`benchmarks/sampler_latency.py` times both forms beside float32 in one run.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from physgen.errors import PhysgenError

WEIGHTS = ("float32", "bfloat16", "int8")
INT8_LEVELS = 127  # symmetric: -127..127, so that negation is exact and zero is a level


class QuantizedArray(NamedTuple):
    """An int8 weight array with one float32 scale per output channel (its last axis): w ~ values * scale."""

    values: jax.Array
    scale: jax.Array


def _is_quantized(x) -> bool:
    return isinstance(x, QuantizedArray)


def _is_weight(x) -> bool:
    """A float32 (or float64) weight matrix or convolution kernel: not yet in a storage form."""
    return jnp.ndim(x) >= 2 and jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != jnp.bfloat16


def quantize_int8(w: jax.Array) -> QuantizedArray:
    """Symmetric per-output-channel int8: scale = max|w| / 127 over all axes but the last (1 for an all-zero
    channel, which then stays exactly zero)."""
    peak = jnp.max(jnp.abs(w), axis=tuple(range(w.ndim - 1)))
    scale = jnp.where(peak > 0, peak / INT8_LEVELS, 1.0).astype(jnp.float32)
    values = jnp.clip(jnp.round(w / scale), -INT8_LEVELS, INT8_LEVELS).astype(jnp.int8)
    return QuantizedArray(values, scale)


def quantize(params, weights: str):
    """The storage form of a parameter pytree: unchanged for "float32", every weight array (floating, ndim >= 2)
    cast to bfloat16 for "bfloat16" or replaced by a `QuantizedArray` for "int8". Leaves already in a storage form
    (bfloat16 arrays, `QuantizedArray`s) and arrays of ndim < 2 are kept as they are, so quantizing twice is
    quantizing once."""
    if weights not in WEIGHTS:
        raise PhysgenError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    if weights == "float32":
        return params
    convert = quantize_int8 if weights == "int8" else (lambda w: w.astype(jnp.bfloat16))
    return jax.tree.map(lambda x: convert(x) if not _is_quantized(x) and _is_weight(x) else x, params,
                        is_leaf=_is_quantized)


def dequantize(params):
    """Float32 parameters for compute: int8 values times their scales, bfloat16 widened; float32 leaves as they are."""

    def widen(x):
        if _is_quantized(x):
            return x.values.astype(jnp.float32) * x.scale
        return x.astype(jnp.float32) if getattr(x, "dtype", None) == jnp.bfloat16 else x

    return jax.tree.map(widen, params, is_leaf=_is_quantized)
