"""The 'vision' model of the classic world model (Ha & Schmidhuber): a beta-VAE of single observations.

`inputs="state"`: state vectors, encoded and reconstructed in symlog space by MLPs.
`inputs="image"`: small RGB frames of a 2-D task (`render_frames`), pixels in [0, 1], by strided convolutions.
The loss is the negative beta-ELBO: squared reconstruction error (a Gaussian likelihood) + beta * KL(q(z|x) || N(0, I)).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from physgen.data import Trajectories
from physgen.envs import Task
from physgen.envs.rollout import episode_lengths, episode_seeds, expert_policy, scan_episodes
from physgen.configs import Optimisation, Parts, check
from physgen.errors import PhysgenError
from physgen.world_models import distributions as D
from physgen.world_models.rssm import MLP

INPUTS = ("state", "image")


@dataclass(frozen=True)
class VAEConfig(Parts):
    """Every hyperparameter of a VAE; written into its checkpoint."""

    inputs: str = "state"
    image_size: int = 32  # frames are image_size x image_size RGB; a multiple of 2 ** len(channels)
    frame_episodes: int = 50  # expert episodes rendered for image training
    latent: int = 16
    hidden: int = 128
    channels: tuple[int, ...] = (32, 64, 128)
    beta: float = 1.0
    optim: Optimisation = Optimisation(steps=3_000, batch_size=64, grad_clip=100.0, steps_per_call=250)

    def __post_init__(self):
        check(self, {"inputs": INPUTS}, ("latent", "hidden", "frame_episodes"))
        if self.inputs == "image" and self.image_size % 2 ** len(self.channels):
            raise PhysgenError(f"image_size {self.image_size} must be divisible by {2 ** len(self.channels)} "
                               f"(the encoder halves it {len(self.channels)} times)")


def conv_kernel_init(key, shape, dtype=jnp.float32):
    """LeCun normal over the receptive field, drawn as a (fan_in, out) matrix and reshaped: the same distribution as
    `nnx.initializers.lecun_normal()`, but XLA:CPU compiles a rank-2 draw several times faster than a rank-4 one."""
    return nnx.initializers.lecun_normal()(key, (math.prod(shape[:-1]), shape[-1]), dtype).reshape(shape)


class ConvEncoder(nnx.Module):
    def __init__(self, size: int, channels: tuple[int, ...], out: int, rngs: nnx.Rngs):
        widths = (3, *channels)
        self.convs = nnx.List([nnx.Conv(a, b, (4, 4), strides=2, kernel_init=conv_kernel_init, rngs=rngs)
                               for a, b in itertools.pairwise(widths)])
        self.out = nnx.Linear((size // 2 ** len(channels)) ** 2 * channels[-1], out, rngs=rngs)

    def __call__(self, x):
        for conv in self.convs:
            x = jax.nn.silu(conv(x))
        return self.out(x.reshape(*x.shape[:-3], -1))


class ConvDecoder(nnx.Module):
    def __init__(self, size: int, channels: tuple[int, ...], latent: int, rngs: nnx.Rngs):
        self.start = (size // 2 ** len(channels), channels[-1])
        self.inp = nnx.Linear(latent, self.start[0] ** 2 * channels[-1], rngs=rngs)
        widths = (*channels[::-1], channels[0])
        self.deconvs = nnx.List([nnx.ConvTranspose(a, b, (4, 4), strides=2,
                                                       kernel_init=conv_kernel_init, rngs=rngs)
                                 for a, b in itertools.pairwise(widths)])
        self.out = nnx.Conv(channels[0], 3, (3, 3), kernel_init=conv_kernel_init, rngs=rngs)

    def __call__(self, z):
        side, width = self.start
        x = self.inp(z).reshape(*z.shape[:-1], side, side, width)
        for deconv in self.deconvs:
            x = jax.nn.silu(deconv(x))
        return jax.nn.sigmoid(self.out(x))


class VAENet(nnx.Module):
    def __init__(self, config: VAEConfig, obs_dim: int, rngs: nnx.Rngs):
        c = config
        if c.inputs == "state":
            self.encoder = MLP([obs_dim, c.hidden, c.hidden, 2 * c.latent], rngs)
            self.decoder = MLP([c.latent, c.hidden, c.hidden, obs_dim], rngs)
        else:
            self.encoder = ConvEncoder(c.image_size, c.channels, 2 * c.latent, rngs)
            self.decoder = ConvDecoder(c.image_size, c.channels, c.latent, rngs)


class VAE(NamedTuple):
    """The static half of a VAE; parameters are passed separately. Inputs are raw states or uint8/[0, 1] frames."""

    config: VAEConfig
    graphdef: nnx.GraphDef
    obs_dim: int

    @classmethod
    def create(cls, config: VAEConfig, obs_dim: int, key: jax.Array) -> tuple["VAE", Any]:
        graphdef, params = nnx.split(VAENet(config, obs_dim, nnx.Rngs(key)))
        return cls(config, graphdef, obs_dim), params

    @classmethod
    def abstract(cls, config: VAEConfig, obs_dim: int) -> tuple["VAE", Any]:
        """The model and its parameter shapes, without initializing (or compiling) anything."""
        graphdef, params = nnx.split(nnx.eval_shape(lambda: VAENet(config, obs_dim, nnx.Rngs(0))))
        return cls(config, graphdef, obs_dim), params

    def init(self, key: jax.Array):
        return nnx.split(VAENet(self.config, self.obs_dim, nnx.Rngs(key)))[1]

    @property
    def input_shape(self) -> tuple[int, ...]:
        size = self.config.image_size
        return (self.obs_dim,) if self.config.inputs == "state" else (size, size, 3)

    def _space(self, x):
        """Inputs in the space the VAE models: symlog states or [0, 1] pixels."""
        if self.config.inputs == "state":
            return D.symlog(x)
        return x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x

    def encode(self, params, x) -> D.Gaussian:
        return D.gaussian(nnx.merge(self.graphdef, params).encoder(self._space(x)), 1e-4)

    def decode(self, params, z) -> jax.Array:
        """Inputs from latents: raw states, or frames in [0, 1]."""
        out = nnx.merge(self.graphdef, params).decoder(z)
        return D.symexp(out) if self.config.inputs == "state" else out

    def reconstruct(self, params, x) -> jax.Array:
        return self.decode(params, self.encode(params, x).mean)

    def reconstruction_rmse(self, params, x) -> jax.Array:
        """Root-mean-square error of the reconstructions, in raw state units or [0, 1] pixels."""
        target = x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x
        return jnp.sqrt(jnp.mean((self.reconstruct(params, x) - target) ** 2))

    def loss(self, params, x, key) -> tuple[jax.Array, dict]:
        net, target = nnx.merge(self.graphdef, params), self._space(x)
        q = D.gaussian(net.encoder(target), 1e-4)
        recon_out = net.decoder(D.sample(q, key))
        axes = tuple(range(1, target.ndim))
        recon = jnp.sum((recon_out - target) ** 2, axis=axes).mean()
        kl = D.kl(q, D.Gaussian(jnp.zeros_like(q.mean), jnp.ones_like(q.std))).mean()
        total = recon + self.config.beta * kl
        return total, {"loss": total, "recon": recon, "kl": kl}

    def prepare(self, data: Trajectories | np.ndarray):
        """The training inputs: a dataset's observations (state VAE) or a frame array (image VAE)."""
        x = np.asarray(data.observations if isinstance(data, Trajectories) else data)
        if x.shape[1:] != self.input_shape:
            source = "frames from `render_frames`" if self.config.inputs == "image" else "a dataset of this task"
            raise PhysgenError(f"VAE inputs have shape {x.shape[1:]}, the model expects {self.input_shape}; "
                               f"pass {source}")
        return jnp.asarray(x)

    def batch(self, x, key):
        return x[jax.random.randint(key, (self.config.optim.batch_size,), 0, x.shape[0])]


def render_frames(task: Task, seed: int, episodes: int, size: int) -> np.ndarray:
    """Frames (N, size, size, 3) uint8 of every state of `episodes` expert episodes of a pure-JAX task."""
    if task.functional is None:
        raise PhysgenError(f"task {task.name!r} draws no frames of its own; image VAEs need a pure-JAX 2-D task "
                           "such as fork or maze")
    recorded = jax.device_get(scan_episodes(task, expert_policy(task), jnp.asarray(episode_seeds(seed, episodes))))
    term, trunc, states = recorded[3], recorded[4], recorded[6]
    lengths = episode_lengths(term | trunc, task.horizon)
    frames = np.asarray(jax.vmap(jax.vmap(lambda state: task.functional.render(state, size)))(states))
    return np.concatenate([episode[: n + 1] for episode, n in zip(frames, lengths)])
