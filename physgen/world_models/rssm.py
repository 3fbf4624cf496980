"""The recurrent state-space model (RSSM) of Dreamer: a deterministic GRU state plus a stochastic latent.

    model, params = RSSM.create(config, obs_dim, act_dim, key)
    states, posts, priors = model.observe(params, obs, prev_actions, key)    # posterior filtering (lax.scan)
    future = model.imagine(params, states[-1], actions, key)                # prior rollout (lax.scan)
    loss, metrics = model.loss(params, batch, key)                          # batch: windows of `Frames`

Step t of `observe` takes the action that led to observation t: h_t = GRU(h_{t-1}, [z_{t-1}, a_{t-1}]), prior
p(z_t | h_t), posterior q(z_t | h_t, o_t). Vector observations are standardized by the training data's mean and
standard deviation, then enter and are reconstructed in symlog space; the reward head predicts symlog(r_{t-1})
and the continue head 1 - terminal_{t-1} from the state at t.
Training windows run across episode boundaries and reset the state at each episode's first frame (DreamerV3's
replay): a window kept inside one episode would put every termination at the same number of steps after the reset,
and the heads would learn that clock instead of the collision or the goal.
Sequence functions are unbatched (one sequence); `vmap` them over batches.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from physgen.data import Normalizer, Trajectories
from physgen.configs import Optimisation, Parts, check
from physgen.errors import PhysgenError
from physgen.world_models import distributions as D
from physgen.world_models.data import Frames, frames_from, sample_frames

LATENTS = ("categorical", "gaussian")


@dataclass(frozen=True)
class RSSMConfig(Parts):
    """Every hyperparameter of an RSSM; written into its checkpoint. Loss scales follow DreamerV3; the sizes are
    small for CPUs and vector tasks, with Gaussian latents (docs/recipes.md)."""

    latent: str = "gaussian"
    deter: int = 64
    stoch: int = 16  # Gaussian dimensions, or categorical variables
    classes: int = 16  # classes per categorical variable
    hidden: int = 64
    unimix: float = 0.01
    min_std: float = 0.1
    dyn_scale: float = 1.0
    rep_scale: float = 0.1
    free_nats: float = 1.0
    terminal_weight: float = 10.0  # weight of terminal frames in the reward and continue losses
    # the value head: the data's own policy evaluated by lambda-returns over the training windows (MPC's terminal value)
    value_discount: float = 0.99
    value_lambda: float = 0.95
    reward_scale: float | None = None  # rewards are divided by it before symlog; None: fitted by `fit_scales`
    # observations become (obs - obs_center) / obs_scale before symlog; None: fitted by `fit_scales`
    obs_center: tuple[float, ...] | None = None
    obs_scale: tuple[float, ...] | None = None
    sequence_length: int = 64  # frames per training sequence
    optim: Optimisation = Optimisation(steps=5_000, batch_size=16, grad_clip=100.0, steps_per_call=250)

    def __post_init__(self):
        check(self, {"latent": LATENTS}, ("deter", "stoch", "classes", "hidden"))
        if self.reward_scale is not None and not self.reward_scale > 0:
            raise PhysgenError(f"reward_scale must be positive, got {self.reward_scale}")
        if (self.obs_center is None) != (self.obs_scale is None):
            raise PhysgenError("obs_center and obs_scale go together; set both or neither")
        if self.obs_scale is not None and not min(self.obs_scale) > 0:
            raise PhysgenError(f"obs_scale must be positive, got {self.obs_scale}")
        if not (0 < self.value_discount <= 1 and 0 <= self.value_lambda <= 1):
            raise PhysgenError(f"value_discount must be in (0, 1] and value_lambda in [0, 1], got "
                               f"{self.value_discount} and {self.value_lambda}")
        if self.sequence_length < 2:
            raise PhysgenError(f"sequence_length must be at least 2 (one transition), got {self.sequence_length}")

    @property
    def reward_unit(self) -> float:
        return 1.0 if self.reward_scale is None else self.reward_scale

    def _obs_normalizer(self) -> Normalizer:
        return Normalizer(jnp.asarray(self.obs_center), jnp.asarray(self.obs_scale))

    def standardize(self, obs: jax.Array) -> jax.Array:
        return obs if self.obs_scale is None else self._obs_normalizer().normalize(obs)

    def unstandardize(self, x: jax.Array) -> jax.Array:
        return x if self.obs_scale is None else self._obs_normalizer().unnormalize(x)

    @property
    def stoch_size(self) -> int:
        return self.stoch * (self.classes if self.latent == "categorical" else 1)


def lambda_returns(rewards: jax.Array, terminals: jax.Array, values: jax.Array, first: jax.Array, discount: float,
                   lam: float) -> tuple[jax.Array, jax.Array]:
    """Lambda-returns of one window of frames (T,): R_t = r_{t+1} + discount (1 - terminal_{t+1}) ((1 - lam)
    V_{t+1} + lam R_{t+1}), bootstrapped with V where the window or the episode ends; and where R_t is defined
    (1.0: frame t + 1 is in t's episode), as floats."""
    go_on = 1.0 - terminals[1:]

    def back(later, t):
        ret = rewards[t + 1] + discount * go_on[t] * ((1 - lam) * values[t + 1] + lam * later)
        return jnp.where(first[t + 1], values[t], ret), ret

    _, returns = jax.lax.scan(back, values[-1], jnp.arange(len(values) - 1), reverse=True)
    valid = 1.0 - first[1:].astype(jnp.float32)
    return jnp.append(returns, values[-1]), jnp.append(valid, 0.0)


def fit_scales(config: RSSMConfig, data: Trajectories | Frames) -> RSSMConfig:
    """`config` with what is unset fitted to the data (steps, or frames that each arrived by a step).

    `reward_scale`: the mean |reward| of the non-terminal steps, so that dense rewards (fork's progress, a few
    hundredths per step) weigh in the loss as much as the rare terminal ones. `obs_center`/`obs_scale`: each
    observation dimension's mean and standard deviation (1 where it is constant), so that a dimension with a small
    range (fork's goal, +-0.2 against positions over +-1.5) weighs as much in the reconstruction as the others."""
    changes = {}
    if config.reward_scale is None:
        rewards = np.abs(np.asarray(data.rewards)[np.asarray(data.terminals) == 0])
        changes["reward_scale"] = float(rewards.mean()) if rewards.size and rewards.mean() > 0 else 1.0
    if config.obs_scale is None:
        normalizer = Normalizer.fit(data.observations, "gaussian")
        changes["obs_center"] = tuple(map(float, normalizer.shift))
        changes["obs_scale"] = tuple(map(float, normalizer.scale))
    return config.replace(**changes)


class State(NamedTuple):
    """The model state: deterministic (..., deter) and stochastic (..., stoch_size) parts."""

    deter: jax.Array
    stoch: jax.Array

    @property
    def features(self) -> jax.Array:
        return jnp.concatenate([self.deter, self.stoch], axis=-1)


class MLP(nnx.Module):
    """Linear -> SiLU for each hidden layer, then a linear output. (Layer norms here doubled the compile time on CPU
    for no gain on vector tasks; the GRU keeps its norm.)"""

    def __init__(self, sizes: list[int], rngs: nnx.Rngs):
        self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in itertools.pairwise(sizes[:-1])])
        self.out = nnx.Linear(sizes[-2], sizes[-1], rngs=rngs)

    def __call__(self, x):
        for layer in self.hidden:
            x = jax.nn.silu(layer(x))
        return self.out(x)


class GRU(nnx.Module):
    """DreamerV3's layer-normalized GRU: one matmul over [input, state] for all gates, update gate biased shut."""

    def __init__(self, inputs: int, size: int, rngs: nnx.Rngs):
        self.linear = nnx.Linear(inputs + size, 3 * size, use_bias=False, rngs=rngs)
        self.norm = nnx.LayerNorm(3 * size, rngs=rngs)

    def __call__(self, state, x):
        reset, candidate, update = jnp.split(self.norm(self.linear(jnp.concatenate([x, state], -1))), 3, -1)
        candidate = jnp.tanh(jax.nn.sigmoid(reset) * candidate)
        update = jax.nn.sigmoid(update - 1.0)
        return update * candidate + (1.0 - update) * state


class RSSMNet(nnx.Module):
    def __init__(self, config: RSSMConfig, obs_dim: int, act_dim: int, rngs: nnx.Rngs):
        self.config = config
        h, feat = config.hidden, config.deter + config.stoch_size
        params = config.stoch_size if config.latent == "categorical" else 2 * config.stoch
        self.encoder = MLP([obs_dim, h, h], rngs)
        self.img_in = MLP([config.stoch_size + act_dim, h, h], rngs)
        self.gru = GRU(h, config.deter, rngs)
        self.prior = MLP([config.deter, h, params], rngs)
        self.post = MLP([config.deter + h, h, params], rngs)
        self.decoder = MLP([feat, h, h, obs_dim], rngs)
        self.reward = MLP([feat, h, 1], rngs)
        self.cont = MLP([feat, h, 1], rngs)
        self.value = MLP([feat, h, 1], rngs)

    def latent(self, out: jax.Array) -> D.Latent:
        c = self.config
        if c.latent == "categorical":
            return D.categorical(out.reshape(*out.shape[:-1], c.stoch, c.classes), c.unimix)
        return D.gaussian(out, c.min_std)

    def img_step(self, state: State, action, key) -> tuple[State, D.Latent]:
        """One prior step; `key=None` takes the prior's mode instead of a sample."""
        x = jax.nn.silu(self.img_in(jnp.concatenate([state.stoch, action], -1)))
        deter = self.gru(state.deter, x)
        prior = self.latent(self.prior(deter))
        return State(deter, D.mode(prior) if key is None else D.sample(prior, key)), prior

    def embed(self, obs):
        return jax.nn.silu(self.encoder(D.symlog(self.config.standardize(obs))))

    def obs_step(self, deter, embed, key) -> tuple[State, D.Latent]:
        """The posterior given the deterministic state and an observation's embedding; `key=None` takes its mode."""
        post = self.latent(self.post(jnp.concatenate([deter, embed], -1)))
        return State(deter, D.mode(post) if key is None else D.sample(post, key)), post


class RSSM(NamedTuple):
    """The static half of an RSSM (config, network structure, dimensions); parameters are passed separately."""

    config: RSSMConfig
    graphdef: nnx.GraphDef
    obs_dim: int
    act_dim: int

    @classmethod
    def create(cls, config: RSSMConfig, obs_dim: int, act_dim: int, key: jax.Array) -> tuple["RSSM", Any]:
        graphdef, params = nnx.split(RSSMNet(config, obs_dim, act_dim, nnx.Rngs(key)))
        return cls(config, graphdef, obs_dim, act_dim), params

    @classmethod
    def abstract(cls, config: RSSMConfig, obs_dim: int, act_dim: int) -> tuple["RSSM", Any]:
        """The model and its parameter shapes, without initializing (or compiling) anything."""
        graphdef, params = nnx.split(nnx.eval_shape(lambda: RSSMNet(config, obs_dim, act_dim, nnx.Rngs(0))))
        return cls(config, graphdef, obs_dim, act_dim), params

    def init(self, key: jax.Array):
        """Parameters from a key (vmappable over keys)."""
        return nnx.split(RSSMNet(self.config, self.obs_dim, self.act_dim, nnx.Rngs(key)))[1]

    def net(self, params) -> RSSMNet:
        return nnx.merge(self.graphdef, params)

    def initial(self) -> State:
        """The state before the first observation (and the zero action before it)."""
        return State(jnp.zeros(self.config.deter), jnp.zeros(self.config.stoch_size))

    def observe(self, params, obs: jax.Array, prev_actions: jax.Array, key: jax.Array, first: jax.Array | None = None,
                start: State | None = None) -> tuple[State, D.Latent, D.Latent]:
        """Posterior states, posteriors and priors (each stacked over T) of observations (T, obs_dim), where
        `prev_actions[t]` (T, act_dim) led to `obs[t]`; starts from `start` (default: `initial()`), and where
        `first[t]` (T,) is set, from `initial()` and a zero action again (a new episode)."""
        net, initial = self.net(params), self.initial()
        first = jnp.zeros(obs.shape[0], bool) if first is None else first

        def step(state, inputs):
            embed, prev_action, reset, keys = inputs
            state = jax.tree.map(lambda a, b: jnp.where(reset, a, b), initial, state)
            prior_state, prior = net.img_step(state, jnp.where(reset, 0.0, prev_action), keys[0])
            post_state, post = net.obs_step(prior_state.deter, embed, keys[1])
            return post_state, (post_state, post, prior)

        keys = jax.random.split(key, (obs.shape[0], 2))
        return jax.lax.scan(step, initial if start is None else start, (net.embed(obs), prev_actions, first, keys))[1]

    def filter(self, params, state: State, prev_action: jax.Array, obs: jax.Array) -> State:
        """One step of posterior filtering for control (modes, no sampling)."""
        net = self.net(params)
        prior_state, _ = net.img_step(state, prev_action, None)
        return net.obs_step(prior_state.deter, net.embed(obs), None)[0]

    def imagine(self, params, start: State, actions: jax.Array | Callable, key: jax.Array | None = None,
                horizon: int | None = None) -> tuple[State, jax.Array]:
        """Prior rollout from `start`: (states (H, ...), actions (H, act_dim)). `actions` is a sequence
        (H, act_dim) or a policy `(state, key) -> action` run for `horizon` steps. With `key=None` the latents are
        the prior's modes and the policy gets `None` for its key."""
        net = self.net(params)
        policy = actions if callable(actions) else None
        if policy is not None and horizon is None:
            raise PhysgenError("imagining with a policy needs a horizon; pass horizon=H")
        given = actions if policy is None else jnp.zeros((horizon, 0))
        keys = jnp.zeros((len(given), 0)) if key is None else jax.random.split(key, (len(given), 2))

        def step(state, inputs):
            action, k = inputs
            k_act, k_state = (None, None) if key is None else k
            action = action if policy is None else policy(state, k_act)
            state, _ = net.img_step(state, action, k_state)
            return state, (state, action)

        return jax.lax.scan(step, start, (given, keys))[1]

    def decode(self, params, states: State) -> jax.Array:
        """Observations predicted from states (raw units)."""
        return self.config.unstandardize(D.symexp(self.net(params).decoder(states.features)))

    def reward(self, params, states: State) -> jax.Array:
        return D.symexp(self.net(params).reward(states.features)[..., 0]) * self.config.reward_unit

    def continuation(self, params, states: State) -> jax.Array:
        """The probability that the episode goes on after arriving in each state. The loss weighs terminal frames
        `terminal_weight` times more, which lowers the head's logit by log(terminal_weight) at the optimum; that
        is added back here, so the result is calibrated."""
        logit = self.net(params).cont(states.features)[..., 0]
        return jax.nn.sigmoid(logit + jnp.log(self.config.terminal_weight))

    def value(self, params, states: State) -> jax.Array:
        """The discounted return (raw units) the data's policy collects from each state on, as the value head
        learned it by lambda-returns on the training windows."""
        return D.symexp(self.net(params).value(states.features)[..., 0]) * self.config.reward_unit

    def loss(self, params, batch: Frames, key: jax.Array) -> tuple[jax.Array, dict]:
        """Reconstruction (symlog MSE), reward (symlog MSE), continue (BCE) and balanced KL on windows of frames.
        The reward and continue heads are not asked about an episode's first frame (nothing led to it), and
        terminations, about one frame per episode but all that shows where collisions and goals are, weigh
        `terminal_weight` times more (`continuation` undoes the bias this gives the continue head; the reward
        head's predictions lean towards terminal rewards where a state is ambiguous)."""
        c, net = self.config, self.net(params)
        keys = jax.random.split(key, batch.observations.shape[0])
        states, posts, priors = jax.vmap(self.observe, in_axes=(None, 0, 0, 0, 0))(
            params, batch.observations, batch.prev_actions, keys, batch.first)
        feat, arrived = states.features, 1.0 - batch.first
        weight = arrived * (1.0 + (c.terminal_weight - 1.0) * batch.terminals) / arrived.sum()
        recon = jnp.sum((net.decoder(feat) - D.symlog(c.standardize(batch.observations))) ** 2, -1).mean()
        reward = jnp.sum(weight * (net.reward(feat)[..., 0] - D.symlog(batch.rewards / c.reward_unit)) ** 2)
        cont = jnp.sum(weight * optax.sigmoid_binary_cross_entropy(net.cont(feat)[..., 0], 1.0 - batch.terminals))
        kl, (dyn, rep) = D.kl_balance(posts, priors, c.dyn_scale, c.rep_scale, c.free_nats)
        # the value head learns on frozen features: it reads the representation without shaping it
        predicted = net.value(jax.lax.stop_gradient(feat))[..., 0]
        # bootstrapping from its own predictions can run away early in training (hopper's did); no return of this
        # data exceeds max |r| / (1 - discount), so neither may a bootstrapped value
        bound = jnp.max(jnp.abs(batch.rewards)) / (1.0 - c.value_discount)
        values = jax.lax.stop_gradient(jnp.clip(D.symexp(predicted) * c.reward_unit, -bound, bound))
        targets, valid = jax.vmap(lambda *x: lambda_returns(*x, c.value_discount, c.value_lambda))(
            batch.rewards, batch.terminals, values, batch.first)
        valid = valid * (1.0 - batch.terminals)
        value = jnp.sum(valid * (predicted - D.symlog(targets / c.reward_unit)) ** 2) / jnp.maximum(valid.sum(), 1.0)
        total = recon + reward + cont + kl + value
        return total, {"loss": total, "recon": recon, "reward": reward, "cont": cont, "kl_dyn": dyn, "kl_rep": rep,
                       "value": value}

    def prepare(self, data: Trajectories) -> Frames:
        """The training inputs: every episode as frames (see `frames_from`), checked for rewards and length."""
        if not np.any(np.asarray(data.rewards)):
            raise PhysgenError("the dataset holds no rewards (all zero), so the RSSM's reward head cannot be trained; "
                               "regenerate it with `physgen data`, or train the observation model alone with "
                               "`--method vae`")
        frames = frames_from(data)
        if self.config.sequence_length > len(frames.first):
            raise PhysgenError(f"sequence length {self.config.sequence_length} exceeds the {len(frames.first)} frames "
                               "of the dataset; choose a shorter sequence_length or generate more episodes")
        return frames

    def batch(self, frames: Frames, key: jax.Array) -> Frames:
        return sample_frames(frames, key, self.config.optim.batch_size, self.config.sequence_length)
