"""The observation encoder of image policies: a small conv net with GroupNorm and a spatial softmax, as Diffusion
Policy's (a ResNet with GroupNorm in place of BatchNorm, spatial softmax in place of global pooling), smaller.

Each frame goes through `Conv2d` layers (3x3 kernels, each halving the frame, GroupNorm and Mish between); the spatial
softmax turns each channel of the last into the expected (x, y) of its activation, a keypoint in [-1, 1]^2
(Levine et al. 2016), and a linear layer maps the keypoints to the features the denoiser is conditioned on.
Training shifts each frame by up to `shift` pixels (edge padding, then a random crop back to the size: DrQ's
augmentation, the small-image form of Diffusion Policy's random crop). The policy encodes an observation history
once per chunk, before the sampler, never per denoising step.

On the CPU a convolution is written as shifted slices and one matmul (as `physgen.policies.nets.Conv1d`), which
XLA:CPU runs faster than `lax.conv`; elsewhere it is `lax.conv`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from physgen.policies.nets import mish


class Conv2d(nnx.Module):
    """3x3-style 2-D convolution over (B, H, W, C), padding `kernel // 2`, with a stride."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1, fast: bool | None = None, *,
                 rngs: nnx.Rngs):
        self.kernel_size, self.stride = kernel, stride
        self.fast = jax.default_backend() == "cpu" if fast is None else fast
        fan_in = kernel * kernel * c_in
        self.kernel = nnx.Param(nnx.initializers.lecun_normal()(rngs.params(), (fan_in, c_out))
                                .reshape(kernel, kernel, c_in, c_out))
        self.bias = nnx.Param(jnp.zeros((c_out,)))

    def __call__(self, x):
        k, s, pad = self.kernel_size, self.stride, self.kernel_size // 2
        if not self.fast:
            y = jax.lax.conv_general_dilated(x, self.kernel[...], (s, s), [(pad, pad), (pad, pad)],
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
            return y + self.bias[...]
        height, width = ((n + 2 * pad - k) // s + 1 for n in x.shape[1:3])
        xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        taps = jnp.concatenate([xp[:, i:i + s * (height - 1) + 1:s, j:j + s * (width - 1) + 1:s]
                                for i in range(k) for j in range(k)], axis=-1)
        return taps @ self.kernel[...].reshape(-1, self.kernel.shape[-1]) + self.bias[...]


def spatial_softmax(features: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, 2C): each channel's softmax-weighted mean pixel position, (x, y) in [-1, 1] (x left to
    right, y top to bottom, pixel centres)."""
    batch, height, width, channels = features.shape
    weights = jax.nn.softmax(features.reshape(batch, height * width, channels), axis=1)
    ys, xs = jnp.meshgrid(jnp.linspace(-1.0, 1.0, height), jnp.linspace(-1.0, 1.0, width), indexing="ij")
    x = jnp.einsum("bpc,p->bc", weights, xs.reshape(-1))
    y = jnp.einsum("bpc,p->bc", weights, ys.reshape(-1))
    return jnp.concatenate([x, y], axis=-1)


def random_shift(frames: jax.Array, key: jax.Array, shift: int, group: int = 1) -> jax.Array:
    """Frames (B, H, W, C) moved by a whole number of pixels in [-shift, shift] on each axis, edges repeated; each
    `group` of consecutive frames (one observation history) moves alike, keeping the motion between them."""
    batch, height, width, _ = frames.shape
    padded = jnp.pad(frames, ((0, 0), (shift, shift), (shift, shift), (0, 0)), mode="edge")
    offsets = jnp.repeat(jax.random.randint(key, (batch // group, 2), 0, 2 * shift + 1), group, axis=0)
    crop = jax.vmap(lambda frame, o: jax.lax.dynamic_slice(frame, (o[0], o[1], 0), (height, width, frame.shape[-1])))
    return crop(padded, offsets)


class ImageEncoder(nnx.Module):
    """Frames (B, H, W, 3) in [-1, 1] -> features (B, `features`)."""

    def __init__(self, channels: tuple[int, ...], features: int, groups: int = 4, *, rngs: nnx.Rngs):
        widths = (3, *channels)
        # stride 2 throughout: on a CPU the encoder's cost is per pixel, and the spatial softmax locates a keypoint
        # between the pixels of a coarse map
        self.convs = nnx.List([Conv2d(a, b, 3, 2, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])])
        self.norms = nnx.List([nnx.GroupNorm(b, num_groups=min(groups, b), rngs=rngs) for b in channels[:-1]])
        self.output = nnx.Linear(2 * channels[-1], features, rngs=rngs)

    def __call__(self, frames, key: jax.Array | None = None, shift: int = 0, group: int = 1):
        """`key`: shift the frames by up to `shift` pixels first, each `group` alike (training's augmentation)."""
        x = frames if key is None or shift == 0 else random_shift(frames, key, shift, group)
        for conv, norm in zip(self.convs[:-1], self.norms, strict=True):
            x = mish(norm(conv(x)))
        return self.output(spatial_softmax(self.convs[-1](x)))
