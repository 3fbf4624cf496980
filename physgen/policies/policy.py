"""One interface for the offline policies (diffusion, flow matching, BC): pure, jittable functions over parameters.

    policy, params = Policy.create(config, obs_dim, act_dim, key)
    loss = policy.loss(params, batch, key)                       # batch: a normalized WindowBatch
    chunk = policy.sample(params, obs_history, key, steps)       # normalized in, normalized out

`PolicyState` adds the normalizers and action bounds, and `act(policy, state, obs_history, key)` maps raw
observations to raw, clipped actions. An image policy (`image_size`, for tasks observed through a camera) encodes
its frames once per chunk, before the sampler (`Policy.conditioning`). BC uses the same network trunk, called with
a zero chunk at t = 0 and trained by mean squared error: the non-generative ablation of the same model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from physgen.configs import Optimisation, Parts, check
from physgen.data import Normalizer, WindowBatch
from physgen.errors import PhysgenError
from physgen.policies import diffusion, flow
from physgen.policies.encoder import ImageEncoder
from physgen.policies.guidance import Guide
from physgen.policies.nets import ConditionalUnet1D, MLPDenoiser
from physgen.policies.quantize import WEIGHTS, dequantize, quantize

METHODS = ("diffusion", "flow", "bc")
NETWORKS = ("mlp", "unet")
OBS_CLIP = 10.0  # normalized units: 4.5 data ranges beyond min-max's [-1, 1], as PPO's observation clip


@dataclass(frozen=True)
class Chunking:
    """Observation history T_o, predicted chunk T_p, executed actions T_a (receding horizon); `ensemble=k` blends
    the chunks covering a step (ACT's temporal ensembling, `physgen.policies.agent`), None acts with the newest.
    `delay`: control steps between a chunk's observation and its first executed action (a slow sampler's, as on a
    robot); `rtc`: real-time chunking, each chunk guided towards the one before (`physgen.policies.guidance`)."""

    obs_steps: int = 2
    action_steps: int = 16
    exec_steps: int = 8
    ensemble: float | None = None
    delay: int = 0
    rtc: bool = False

    def __post_init__(self):
        check(self, positive=("obs_steps",))
        k = self.ensemble
        if k is not None and (type(k) not in (int, float) or not math.isfinite(k)):
            raise PhysgenError(f"ensemble (the temporal ensembling rate k) must be a finite number or None, got {k!r}")
        if not 1 <= self.exec_steps <= self.action_steps:
            raise PhysgenError(f"exec_steps (T_a={self.exec_steps}) must be between 1 and action_steps "
                               f"(T_p={self.action_steps})")
        if not 0 <= self.delay <= self.action_steps - self.exec_steps:
            raise PhysgenError(f"delay must be between 0 and action_steps - exec_steps (T_p - T_a = "
                               f"{self.action_steps} - {self.exec_steps}), got {self.delay}: a chunk that arrives "
                               "`delay` steps late still needs T_a actions")


@dataclass(frozen=True)
class Network:
    """The denoiser: an MLP with FiLM or concatenated conditioning, or Diffusion Policy's 1-D U-Net."""

    network: str = "mlp"
    hidden: int = 256
    depth: int = 3
    conditioning: str = "film"
    unet_dims: tuple[int, ...] = (64, 128, 256)
    unet_kernel: int = 5
    unet_groups: int = 8
    time_dim: int = 64

    def __post_init__(self):
        check(self, {"network": NETWORKS, "conditioning": ("film", "concat")},
              ("hidden", "depth", "time_dim", "unet_kernel", "unet_groups"))
        if self.time_dim % 2 or self.time_dim < 4:  # sin and cos halves, frequencies spaced over half - 1 gaps
            raise PhysgenError(f"time_dim must be even and at least 4 (the sinusoidal time embedding), got "
                               f"{self.time_dim}")


@dataclass(frozen=True)
class Vision:
    """Image observations (`physgen.envs.images`): `image_size` > 0 reads each observation as a flattened
    image_size x image_size RGB frame and encodes it with `physgen.policies.encoder.ImageEncoder` (conv widths
    `encoder_channels`, `image_features` per frame, training shifts of up to `image_shift` pixels); an image task's
    recipe sets it. 0: the policy is conditioned on the observation vector itself."""

    image_size: int = 0
    encoder_channels: tuple[int, ...] = (16, 32)
    image_features: int = 64
    image_shift: int = 0  # physgen's cameras do not move, and shifted frames slowed learning there (docs/recipes.md)

    def __post_init__(self):
        check(self, positive=("image_features",))
        if self.image_size < 0 or self.image_shift < 0 or not self.encoder_channels or min(self.encoder_channels) < 1:
            raise PhysgenError(f"image_size and image_shift must be 0 or more and encoder_channels positive widths, "
                               f"got {self.image_size}, {self.image_shift}, {self.encoder_channels}")


@dataclass(frozen=True)
class Diffusion:
    train_diffusion_steps: int = 100
    schedule: str = "cosine"
    prediction: str = "sample"  # the clean chunk; a task's recipe may choose epsilon (docs/recipes.md)
    sampler: str = "ddim"
    ddim_eta: float = 0.0

    def __post_init__(self):
        check(self, {"schedule": diffusion.SCHEDULES, "prediction": diffusion.PREDICTIONS,
                     "sampler": ("ddpm", "ddim")}, ("train_diffusion_steps",))


@dataclass(frozen=True)
class Flow:
    coupling: str = "independent"  # conditional OT costs twice the training time (docs/recipes.md)
    integrator: str = "euler"
    sinkhorn_epsilon: float = 0.05
    sinkhorn_iterations: int = 100
    condition_weight: float = 10.0  # OT's cost of moving noise to another condition, per unit squared distance
    target: str = "velocity"  # what the network outputs: the velocity, or the clean chunk ("sample")

    def __post_init__(self):
        check(self, {"coupling": flow.COUPLINGS, "integrator": flow.INTEGRATORS, "target": flow.TARGETS},
              ("sinkhorn_iterations",))
        if not self.condition_weight >= 0:
            raise PhysgenError(f"condition_weight must be zero or positive, got {self.condition_weight}")


@dataclass(frozen=True)
class PolicyConfig(Parts):
    """Every hyperparameter of an offline policy, by concern; written flat into its checkpoint and into reports
    (`PolicyConfig.of(steps=..., exec_steps=...)` changes fields by name)."""

    method: str = "diffusion"
    chunking: Chunking = Chunking()
    net: Network = Network()
    vision: Vision = Vision()
    diffusion: Diffusion = Diffusion()
    flow: Flow = Flow()
    inference_steps: int = 10  # sampling steps (denoising or integration) unless the caller asks for another number
    weights: str = "float32"  # how the sampler stores its weight matrices: physgen.policies.quantize.WEIGHTS
    optim: Optimisation = Optimisation(steps=10_000, batch_size=256, learning_rate=1e-3, weight_decay=1e-6,
                                       warmup_steps=500, grad_clip=1.0, steps_per_call=500)
    ema_decay: float = 0.999

    def __post_init__(self):
        check(self, {"method": METHODS, "weights": WEIGHTS}, ("inference_steps",))
        if self.chunking.rtc and self.method == "bc":
            raise PhysgenError("rtc guides a sampler, and a bc policy has none: leave rtc off for bc")
        depth = len(self.net.unet_dims) - 1
        if self.net.network == "unet" and self.chunking.action_steps % 2**depth:
            raise PhysgenError(f"the U-Net halves the chunk {depth} times: action_steps "
                               f"{self.chunking.action_steps} must be divisible by {2**depth}")


class ImagePolicyNet(nnx.Module):
    """An image policy's network: the encoder of its frames and the denoiser conditioned on their features."""

    def __init__(self, encoder: ImageEncoder, denoiser: nnx.Module):
        self.encoder, self.denoiser = encoder, denoiser


def make_network(config: PolicyConfig, obs_dim: int, act_dim: int, key: jax.Array) -> nnx.Module:
    net, chunking, vision, rngs = config.net, config.chunking, config.vision, nnx.Rngs(key)
    features = vision.image_features if vision.image_size else obs_dim
    chunk, cond_dim = (chunking.action_steps, act_dim), chunking.obs_steps * features
    if net.network == "unet":
        denoiser = ConditionalUnet1D(chunk, cond_dim, net.unet_dims, net.time_dim, net.unet_kernel, net.unet_groups,
                                     rngs=rngs)
    else:
        denoiser = MLPDenoiser(chunk, cond_dim, net.hidden, net.depth, net.time_dim, net.conditioning, rngs=rngs)
    if not vision.image_size:
        return denoiser
    return ImagePolicyNet(ImageEncoder(vision.encoder_channels, vision.image_features, rngs=rngs), denoiser)


def observation_normalizer(config: PolicyConfig, observations) -> Normalizer:
    """Min-max per dimension of `observations` (Diffusion Policy's), or for frames the fixed map of pixel values
    [0, 255] onto [-1, 1]: a pixel's range in the data says nothing about the pixels a policy will see."""
    if not config.vision.image_size:
        return Normalizer.fit(observations)
    half = jnp.full(observations.shape[-1], 127.5, jnp.float32)
    return Normalizer(half, half)


class Policy(NamedTuple):
    """The static half of a policy (config, network structure, dimensions); parameters are passed separately."""

    config: PolicyConfig
    graphdef: nnx.GraphDef
    obs_dim: int
    act_dim: int

    @classmethod
    def create(cls, config: PolicyConfig, obs_dim: int, act_dim: int, key: jax.Array) -> tuple["Policy", Any]:
        """The policy and freshly initialized parameters (an `nnx.State`, a pytree) from a PRNG key."""
        policy, _ = cls.abstract(config, obs_dim, act_dim)
        return policy, policy.init(key)

    @classmethod
    def abstract(cls, config: PolicyConfig, obs_dim: int, act_dim: int) -> tuple["Policy", Any]:
        """The policy and its parameters' shapes, its network traced without computing any weights (`init` or a
        checkpoint gives them): creating them would compile each initializer for each of the network's shapes."""
        network = nnx.eval_shape(lambda: make_network(config, obs_dim, act_dim, jax.random.key(0)))
        graphdef, shapes = nnx.split(network)
        return cls(config, graphdef, obs_dim, act_dim), shapes

    def init(self, key: jax.Array):
        """Parameters from a key (vmappable over keys)."""
        return nnx.split(make_network(self.config, self.obs_dim, self.act_dim, key))[1]

    def network(self, params) -> nnx.Module:
        """The network: the denoiser, called as `net(x, t, cond)` (see `physgen.policies.nets`), or an image
        policy's `ImagePolicyNet`."""
        return nnx.merge(self.graphdef, params)

    def conditioning(self, params, obs_history: jax.Array, key: jax.Array | None = None):
        """(denoiser, cond (B, T_o * features)) for normalized histories (B, T_o, obs_dim): the observations as
        they are, or frames through the encoder, once (each shifted at random with `key`: training)."""
        net, batch, vision = self.network(params), obs_history.shape[0], self.config.vision
        if not vision.image_size:
            return net, obs_history.reshape(batch, -1)
        frames = obs_history.reshape(-1, vision.image_size, vision.image_size, 3)
        features = net.encoder(frames, key, vision.image_shift, obs_history.shape[1])
        return net.denoiser, features.reshape(batch, -1)

    def loss(self, params, batch: WindowBatch, key: jax.Array) -> jax.Array:
        """The training loss on a normalized batch of windows."""
        config = self.config
        shift_key = None
        if config.vision.image_size:
            key, shift_key = jax.random.split(key)
        net, cond = self.conditioning(params, batch.observations, shift_key)
        x1 = batch.actions
        if config.method == "diffusion":
            schedule = diffusion.make_schedule(config.diffusion.schedule, config.diffusion.train_diffusion_steps)
            return diffusion.diffusion_loss(net, schedule, config.diffusion.prediction, x1, cond, key)
        if config.method == "flow":
            return flow.flow_matching_loss(net, x1, cond, key, config.flow.coupling, config.flow.sinkhorn_epsilon,
                                           config.flow.sinkhorn_iterations, config.flow.condition_weight,
                                           config.flow.target)
        return jnp.mean((net(jnp.zeros_like(x1), jnp.zeros(x1.shape[0]), cond) - x1) ** 2)

    def sample(self, params, obs_history: jax.Array, key: jax.Array, steps: int | None = None,
               guide: Guide | None = None, noise: jax.Array | None = None) -> jax.Array:
        """Normalized action chunks (B, T_p, act_dim) for normalized observation histories (B, T_o, obs_dim);
        `guide` (normalized): real-time chunking's guidance (`physgen.policies.guidance`); `noise` (N, B, T_p,
        act_dim): the sampler's standard normal draws, in `physgen.control.sampler_noise`'s order, in place of those
        it draws from `key` (an ONNX export takes them as an input)."""
        config, batch = self.config, obs_history.shape[0]
        net, cond = self.conditioning(params, obs_history)
        shape = (batch, config.chunking.action_steps, self.act_dim)
        steps = steps or config.inference_steps
        if config.method == "diffusion":
            d = config.diffusion
            if noise is None:
                schedule = diffusion.make_schedule(d.schedule, d.train_diffusion_steps)
                return diffusion.sample(net, schedule, d.prediction, cond, key, shape, steps, d.sampler, d.ddim_eta,
                                        guide)
            with jax.ensure_compile_time_eval():  # constants in an ONNX model: its cumprod has no ONNX operator
                schedule = diffusion.make_schedule(d.schedule, d.train_diffusion_steps)
            return diffusion.sample_from_noise(net, schedule, d.prediction, cond, noise[0],
                                               noise[1:] if len(noise) > 1 else None, steps, d.sampler, d.ddim_eta,
                                               guide)
        if config.method == "flow":
            x0 = jax.random.normal(key, shape) if noise is None else noise[0]
            return flow.integrate(net, x0, cond, steps, config.flow.integrator, guide, config.flow.target)
        return net(jnp.zeros(shape), jnp.zeros(batch), cond)


class PolicyState(NamedTuple):
    """What acting needs besides the `Policy`: evaluation (EMA) parameters, normalizers, action bounds."""

    params: Any
    obs_norm: Normalizer
    act_norm: Normalizer
    action_low: jax.Array
    action_high: jax.Array


def act(policy: Policy, state: PolicyState, obs_history: jax.Array, key: jax.Array,
        steps: int | None = None, guide: Guide | None = None, noise: jax.Array | None = None) -> jax.Array:
    """Raw action chunks (B, T_p, act_dim), inside the action bounds, for raw observation histories (B, T_o, obs_dim);
    `guide` holds raw actions; `noise` as `Policy.sample` takes it.

    Normalized observations are clipped to +-`OBS_CLIP`: far outside the data, FiLM multiplies the network's
    hidden units by the observations at every layer, and a flow's Euler steps compound the resulting velocity
    until float32 overflows to NaN (a fork goal coordinate at 300 did, where the data spans +-0.2).

    The weights are sampled in the config's storage form (`weights`): float32 parameters are quantized here, and
    parameters quantized ahead (`physgen.policies.quantize`) are dequantized here, inside the compiled program; both
    compute the same chunk."""
    obs = jnp.clip(state.obs_norm.normalize(obs_history), -OBS_CLIP, OBS_CLIP)
    params = dequantize(quantize(state.params, policy.config.weights))
    if guide is not None:
        guide = guide._replace(target=state.act_norm.normalize(guide.target))
    chunk = policy.sample(params, obs, key, steps, guide, noise)
    return jnp.clip(state.act_norm.unnormalize(chunk), state.action_low, state.action_high)


def stored_weights(policy: Policy, state: PolicyState, weights: str | None = None) -> tuple[Policy, PolicyState]:
    """(policy, state) with the config's `weights` replaced (None keeps it) and the state's weight matrices quantized
    to it (`physgen.policies.quantize`): a compiled sampler given this state holds them in that form."""
    if weights is not None:
        policy = policy._replace(config=policy.config.replace(weights=weights))
    return policy, state._replace(params=quantize(state.params, policy.config.weights))


def flat_sampler(policy: Policy, state: PolicyState, steps: int | None = None):
    """(leaves, sample): the state as a flat tuple of arrays, and `sample(leaves, obs_history, key)`, one raw chunk
    (T_p, act_dim) for one raw history (T_o, obs_dim). Compiled callers pass the leaves rather than the state:
    flattening the nested NNX pytree at every call cost ~40 us."""
    leaves, treedef = jax.tree.flatten(state)

    def sample(leaves, obs_history, key):
        return act(policy, jax.tree.unflatten(treedef, leaves), obs_history[None], key, steps)[0]

    return tuple(leaves), sample
