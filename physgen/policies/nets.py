"""Networks that map (noisy action chunk, time, observation history) to an action-chunk-shaped output.

`MLPDenoiser`: sinusoidal time embedding, FiLM or concatenated conditioning.
`ConditionalUnet1D`: Diffusion Policy's layout (Chi et al.): residual 1-D conv blocks with GroupNorm and Mish, FiLM
from the time embedding and the observations, three resolutions. On the CPU its convolutions are written as shifted
slices and one matmul, which XLA:CPU runs several times faster than `lax.conv` (`nnx.Conv`); on other backends they
are `lax.conv`, which GPU and TPU compilers map onto their convolution kernels. `Conv1d(fast=False)` is that form,
and the tests check that both agree.

Every network is called as `net(x, t, cond)` with x (B, T_p, act_dim), t (B,) in [0, 1] and cond (B, T_o * obs_dim),
which is `net.apply(x, net.context(t, cond))`: `context` computes everything that does not depend on x (time
embedding, FiLM scales and shifts), so a sampler computes it for all its steps in one batched pass
(`diffusion.step_contexts`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx


_MISH_LINEAR_FROM = 20.0  # above this, tanh(softplus(x)) is 1 in float32 and Mish is x


@jax.custom_jvp
def mish(x):
    """Mish, x * tanh(softplus(x)), from one exponential: with n = e^x (e^x + 2), tanh(softplus(x)) = n / (n + 2).
    The textbook form evaluates exp, log1p and tanh forward and again backward, on every hidden unit of every
    training step; this one evaluates one exponential for the value and its derivative together."""
    return _mish_and_derivative(x)[0]


@mish.defjvp
def _mish_jvp(primals, tangents):
    value, derivative = _mish_and_derivative(primals[0])
    return value, derivative * tangents[0]


def _mish_and_derivative(x):
    linear = x > _MISH_LINEAR_FROM
    e = jnp.exp(jnp.minimum(x, _MISH_LINEAR_FROM))
    n = e * (e + 2.0)
    tanh_softplus = n / (n + 2.0)
    # d/dx = tanh(sp) + x sech^2(sp) sigmoid(x), with sech^2(sp) = 4 (n + 1) / (n + 2)^2 (no cancellation near 1)
    derivative = tanh_softplus + x * 4.0 * (n + 1.0) / (n + 2.0) ** 2 * e / (1.0 + e)
    return jnp.where(linear, x, x * tanh_softplus), jnp.where(linear, 1.0, derivative)


def sinusoidal_embedding(t: jax.Array, dim: int, scale: float = 1000.0) -> jax.Array:
    """Transformer-style embedding of t in [0, 1] (scaled to [0, `scale`], as diffusion step indices are)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half) / (half - 1))
    angles = scale * t[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class TimeEncoder(nnx.Module):
    """Sinusoidal embedding -> Linear -> Mish -> Linear (Diffusion Policy's diffusion-step encoder)."""

    def __init__(self, dim: int, rngs: nnx.Rngs):
        self.dim = dim
        self.fc1 = nnx.Linear(dim, 4 * dim, rngs=rngs)
        self.fc2 = nnx.Linear(4 * dim, dim, rngs=rngs)

    def __call__(self, t):
        return self.fc2(mish(self.fc1(sinusoidal_embedding(t, self.dim))))


class MLPDenoiser(nnx.Module):
    def __init__(self, chunk_shape: tuple[int, int], cond_dim: int, hidden: int = 256, depth: int = 3,
                 time_dim: int = 64, conditioning: str = "film", *, rngs: nnx.Rngs):
        if conditioning not in ("film", "concat"):
            raise ValueError(f"conditioning must be 'film' or 'concat', got {conditioning!r}")
        self.chunk_shape, self.conditioning = chunk_shape, conditioning
        flat = chunk_shape[0] * chunk_shape[1]
        context = time_dim + cond_dim
        self.time = TimeEncoder(time_dim, rngs)
        self.input = nnx.Linear(flat + (context if conditioning == "concat" else 0), hidden, rngs=rngs)
        self.hidden = nnx.List([nnx.Linear(hidden, hidden, rngs=rngs) for _ in range(depth - 1)])
        if conditioning == "film":
            self.film = nnx.List([nnx.Linear(context, 2 * hidden, rngs=rngs) for _ in range(depth)])
        self.output = nnx.Linear(hidden, flat, rngs=rngs)

    def __call__(self, x, t, cond):
        return self.apply(x, self.context(t, cond))

    def context(self, t, cond):
        """The time embedding and observations, concatenated, or with FiLM each layer's (scale, shift)."""
        context = jnp.concatenate([self.time(t), cond], axis=-1)
        if self.conditioning == "concat":
            return context
        return [tuple(jnp.split(film(context), 2, axis=-1)) for film in self.film]

    def apply(self, x, context):
        batch = x.shape[0]
        x = x.reshape(batch, -1)
        if self.conditioning == "concat":
            h = mish(self.input(jnp.concatenate([x, context], axis=-1)))
            for layer in self.hidden:
                h = mish(layer(h))
        else:
            h = self.input(x)
            for layer, (scale, shift) in zip([None, *self.hidden], context, strict=True):
                h = h if layer is None else layer(h)
                h = mish(h * (1.0 + scale) + shift)
        return self.output(h).reshape(batch, *self.chunk_shape)


class Conv1d(nnx.Module):
    """1-D convolution over (B, L, C) with 'same'-style padding `kernel // 2` and a stride."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, fast: bool = True, *, rngs: nnx.Rngs):
        self.kernel_size, self.stride, self.fast = kernel, stride, fast
        self.kernel = nnx.Param(nnx.initializers.lecun_normal()(rngs.params(), (kernel, c_in, c_out)))
        self.bias = nnx.Param(jnp.zeros((c_out,)))

    def __call__(self, x):
        pad = self.kernel_size // 2
        if not self.fast:
            y = jax.lax.conv_general_dilated(x, self.kernel[...], (self.stride,), [(pad, pad)],
                                             dimension_numbers=("NWC", "WIO", "NWC"))
            return y + self.bias[...]
        length = (x.shape[1] + 2 * pad - self.kernel_size) // self.stride + 1
        xp = jnp.pad(x, ((0, 0), (pad, pad), (0, 0)))
        span = self.stride * (length - 1) + 1
        taps = jnp.concatenate([xp[:, j:j + span:self.stride] for j in range(self.kernel_size)], axis=-1)
        return taps @ self.kernel[...].reshape(-1, self.kernel.shape[-1]) + self.bias[...]


class Upsample1d(nnx.Module):
    """Transposed convolution (kernel 4, stride 2, padding 1) doubling the length: zeros between samples, then a conv
    (with the kernel flipped relative to PyTorch's `ConvTranspose1d`)."""

    def __init__(self, channels: int, fast: bool, rngs: nnx.Rngs):
        self.conv = Conv1d(channels, channels, 4, fast=fast, rngs=rngs)

    def __call__(self, x):
        batch, length, channels = x.shape
        dilated = jnp.zeros((batch, 2 * length + 1, channels), x.dtype).at[:, 1::2].set(x)
        return self.conv(dilated)[:, 1: 2 * length + 1]


class ConvBlock(nnx.Module):
    """Conv1d -> GroupNorm -> Mish."""

    def __init__(self, c_in: int, c_out: int, kernel: int, groups: int, fast: bool, rngs: nnx.Rngs):
        self.conv = Conv1d(c_in, c_out, kernel, fast=fast, rngs=rngs)
        self.norm = nnx.GroupNorm(c_out, num_groups=groups, rngs=rngs)

    def __call__(self, x):
        return mish(self.norm(self.conv(x)))


class ResidualBlock(nnx.Module):
    """Two conv blocks, FiLM (per-channel scale and bias) from the conditioning between them, a residual path."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, kernel: int, groups: int, fast: bool, rngs: nnx.Rngs):
        self.block0 = ConvBlock(c_in, c_out, kernel, groups, fast, rngs)
        self.block1 = ConvBlock(c_out, c_out, kernel, groups, fast, rngs)
        self.film = nnx.Linear(cond_dim, 2 * c_out, rngs=rngs)
        self.residual = Conv1d(c_in, c_out, 1, fast=fast, rngs=rngs) if c_in != c_out else None

    def modulation(self, context):
        """FiLM's (scale, bias) from the network's context."""
        return tuple(jnp.split(self.film(mish(context)), 2, axis=-1))

    def __call__(self, x, modulation):
        scale, bias = modulation
        h = self.block0(x) * scale[:, None, :] + bias[:, None, :]
        h = self.block1(h)
        return h + (x if self.residual is None else self.residual(x))


class ConditionalUnet1D(nnx.Module):
    def __init__(self, chunk_shape: tuple[int, int], cond_dim: int, dims: tuple[int, ...] = (256, 512, 1024),
                 time_dim: int = 256, kernel: int = 5, groups: int = 8, fast: bool | None = None, *,
                 rngs: nnx.Rngs):
        """`fast`: slice-and-matmul convolutions (default: on the CPU backend only, see the module docstring)."""
        fast = jax.default_backend() == "cpu" if fast is None else fast
        act_dim = chunk_shape[1]
        context = time_dim + cond_dim
        self.time = TimeEncoder(time_dim, rngs)
        widths = [act_dim, *dims]
        pairs = list(zip(widths[:-1], widths[1:]))
        self.down = nnx.List([
            nnx.List([ResidualBlock(c_in, c_out, context, kernel, groups, fast, rngs),
                      ResidualBlock(c_out, c_out, context, kernel, groups, fast, rngs),
                      Conv1d(c_out, c_out, 3, stride=2, fast=fast, rngs=rngs) if i < len(pairs) - 1 else None])
            for i, (c_in, c_out) in enumerate(pairs)])
        self.mid = nnx.List([ResidualBlock(dims[-1], dims[-1], context, kernel, groups, fast, rngs) for _ in range(2)])
        self.up = nnx.List([
            nnx.List([ResidualBlock(2 * c_out, c_in, context, kernel, groups, fast, rngs),
                      ResidualBlock(c_in, c_in, context, kernel, groups, fast, rngs),
                      Upsample1d(c_in, fast, rngs)])
            for c_in, c_out in reversed(pairs[1:])])
        self.final = ConvBlock(dims[0], dims[0], kernel, groups, fast, rngs)
        self.output = Conv1d(dims[0], act_dim, 1, fast=fast, rngs=rngs)

    def __call__(self, x, t, cond):
        return self.apply(x, self.context(t, cond))

    def blocks(self) -> list[ResidualBlock]:
        """The residual blocks in the order `apply` runs them."""
        return [*(b for down in self.down for b in down[:2]), *self.mid, *(b for up in self.up for b in up[:2])]

    def context(self, t, cond):
        """Every residual block's FiLM (scale, bias), from the time embedding and observations."""
        context = jnp.concatenate([self.time(t), cond], axis=-1)
        return [block.modulation(context) for block in self.blocks()]

    def apply(self, x, context):
        films = iter(context)
        skips = []
        for block_a, block_b, downsample in self.down:
            x = block_b(block_a(x, next(films)), next(films))
            skips.append(x)
            if downsample is not None:
                x = downsample(x)
        for block in self.mid:
            x = block(x, next(films))
        for block_a, block_b, upsample in self.up:
            x = jnp.concatenate([x, skips.pop()], axis=-1)
            x = upsample(block_b(block_a(x, next(films)), next(films)))
        return self.output(self.final(x))
